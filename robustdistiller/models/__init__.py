"""The models: the student (DistilHuBERT architecture + prediction heads), the frozen teacher, the enhancement head."""
