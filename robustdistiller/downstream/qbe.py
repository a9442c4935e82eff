"""Query by example (QbE, SUPERB's QUESST14 task): DTW search over frozen features and TWV scoring.

SUPERB's QbE trains nothing (s3prl's ``quesst14_dtw`` downstream, ``docs/reference/superb_tasks.md`` "QbE"): for one
upstream layer,

1. :func:`standardize` the features of all queries and documents of the run with one per-dimension
   mean and standard deviation (std clamped at 1e-9);
2. :func:`cosine_exp_distance`: ``exp(cosine distance) - 1`` between query and document frames,
   min-max normalised over each query frame's row, the divisor floored at 1e-9 (:data:`MINMAX_FLOOR`) as
   s3prl does, so a row without spread (a one-frame document, identical frames) is all 0: the best match;
3. :func:`subsequence_dtw_cost`: subsequence DTW (dtw-python's ``asymmetric`` step pattern, open
   begin and end), cost normalised by the query length; score = -cost (written ``0.0 - cost``, so a
   perfect match is +0.0, never the signed zero -0.0 that ``-cost`` gives). :class:`DocumentArchive` runs
   it for one query against every document at once (vectorised along the document frames, the
   documents side by side);
4. :func:`normalize_query_scores`: scores z-normalised per query over the documents; decision
   ``YES`` when z > 2.

:func:`write_stdlist` writes the NIST STD-2006 ``benchmark.stdlist.xml`` that the official scorer
(``score-TWV-Cnxe.sh``, a shell script and a Java jar) reads; :func:`read_ground_truth` and
:func:`term_weighted_value` score it in Python with the SUPERB convention: trials over the *full*
ground truth (every query with a target, every document of the ECF), trials the system did not score
get ``missing_score`` (-10, the value s3prl passes to the scorer), beta configurable. Because s3prl
searches English only, every non-English query is all misses: SUPERB MTWVs are roughly the English
share of the queries times an English-only MTWV.
"""

import logging
import os
import xml.etree.ElementTree as ElementTree

import numpy as np

logger = logging.getLogger(__name__)

# beta = C_fa / C_miss * (1 / P_target - 1) with P_target 0.0008, C_fa 1, C_miss 100 (SWS2013 /
# QUESST2014; unverified against the jar) -- NIST STD-2006 uses 999.9.
QUESST14_BETA = (1.0 / 100.0) * (1.0 / 0.0008 - 1.0)
MISSING_TRIAL_SCORE = -10.0
MIN_QUERY_FRAMES = 5  # s3prl: shorter queries score 0 against every document
MINMAX_FLOOR = 1e-9
"""Floor of the min-max divisor ``max - min`` of a distance row (s3prl 0.4.18,
``downstream/quesst14_dtw/expert.py``, ``match``: the divisor clipped to [1e-9, inf)): a row with no
spread becomes all 0."""


def standardize(queries, documents, eps=1e-9):
    """Z-normalises every feature dimension with statistics over all frames of queries and documents.

    Arguments
    ---------
    queries, documents : list of numpy.ndarray
        ``[frames, dims]`` features of one layer.
    eps : float
        Lower clamp of the standard deviation (s3prl's 1e-9; unbiased std as ``torch.std``).

    Returns
    -------
    (list of numpy.ndarray, list of numpy.ndarray)
        The standardised queries and documents (float32).

    Example
    -------
    >>> q, d = standardize([np.array([[0.0, 1.0]])], [np.array([[2.0, 1.0], [4.0, 1.0]])])
    >>> np.round(np.concatenate(q + d), 3).tolist()
    [[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0]]
    """
    frames = np.concatenate([np.asarray(x, dtype=np.float64) for x in list(queries) + list(documents)])
    mean = frames.mean(axis=0)
    std = np.maximum(frames.std(axis=0, ddof=1) if len(frames) > 1 else np.zeros_like(mean), eps)

    def scale(items):
        return [((np.asarray(x, dtype=np.float64) - mean) / std).astype(np.float32) for x in items]

    return scale(queries), scale(documents)


def _unit_rows(features, eps=1e-12):
    features = np.asarray(features, dtype=np.float64)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), eps)


def cosine_exp_distance(query, document, minmax=True, eps=1e-12):
    """``exp(cosine distance) - 1`` between every query frame and every document frame.

    Arguments
    ---------
    query : numpy.ndarray
        ``[N, D]``.
    document : numpy.ndarray
        ``[M, D]``.
    minmax : bool
        Min-max normalise each row (each query frame) to [0, 1], as s3prl: ``(d - min) / max(max - min,
        1e-9)``; a row with no spread (a one-frame document, identical frames) becomes all 0, the best.
    eps : float
        Guards zero vectors.

    Returns
    -------
    numpy.ndarray
        ``[N, M]`` distances.

    Example
    -------
    >>> q = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> d = np.array([[1.0, 0.0], [-1.0, 0.0], [1.0, 1.0]])
    >>> np.round(cosine_exp_distance(q, d, minmax=False), 3).tolist()
    [[0.0, 6.389, 0.34], [1.718, 1.718, 0.34]]
    >>> np.round(cosine_exp_distance(q, d), 3).tolist()
    [[0.0, 1.0, 0.053], [1.0, 1.0, 0.0]]
    >>> cosine_exp_distance(q, d[:1]).tolist()  # one document frame: no spread, distance 0
    [[0.0], [0.0]]
    """
    cosine = _unit_rows(query, eps) @ _unit_rows(document, eps).T
    distance = np.expm1(np.clip(1.0 - cosine, 0.0, 2.0))
    if minmax:
        distance = _minmax_rows(distance, distance.min(axis=1, keepdims=True), distance.max(axis=1, keepdims=True))
    return distance


def _minmax_rows(distance, low, high, floor=MINMAX_FLOOR):
    """``(d - low) / max(high - low, floor)`` (s3prl); a row with no spread is all 0 (its ``d - low`` is 0)."""
    return (distance - low) / np.maximum(high - low, floor)


def subsequence_dtw_cost(distance):
    """Subsequence DTW cost of a query (rows) anywhere in a document (columns), vectorised.

    dtw-python's ``asymmetric`` step pattern with ``open_begin=open_end=True``:
    ``g[0, j] = d[0, j]``, ``g[i, j] = d[i, j] + min(g[i-1, j], g[i-1, j-1], g[i-1, j-2])`` and
    cost ``min_j g[N-1, j] / N`` (normalised by the query length). Each row depends only on the
    previous one, so the recursion runs over the N query frames, vectorised over the document frames.
    Columns holding ``inf`` separate independent documents laid side by side (see
    :func:`search_scores`).

    Arguments
    ---------
    distance : numpy.ndarray
        ``[N, M]`` local distances.

    Returns
    -------
    numpy.ndarray
        ``[M]``: ``g[N-1, j] / N``, the normalised cost of the best match ending at each document frame.

    Example
    -------
    >>> d = np.array([[5.0, 0.0, 5.0, 5.0], [5.0, 5.0, 5.0, 0.0]])
    >>> subsequence_dtw_cost(d).tolist()  # frame 0 of the query at column 1, frame 1 at column 3
    [5.0, 2.5, 2.5, 0.0]
    """
    distance = np.asarray(distance, dtype=np.float64)
    accumulated = distance[0].copy()
    for row in distance[1:]:
        best = accumulated.copy()
        best[1:] = np.minimum(best[1:], accumulated[:-1])
        best[2:] = np.minimum(best[2:], accumulated[:-2])
        accumulated = row + best
    return accumulated / len(distance)


class DocumentArchive:
    """The documents of a search, prepared once for many queries (unit-norm frames, chunks).

    :meth:`scores` computes the distances of a query to every document frame with one matrix
    product per chunk of documents, lays the documents of the chunk side by side separated by two
    ``inf`` columns (the widest DTW step is two frames), min-max normalises each (query, document)
    block over its own rows, and runs :func:`subsequence_dtw_cost` once over the chunk.

    Arguments
    ---------
    documents : list of numpy.ndarray
        ``[M_k, D]`` (standardised) features.
    chunk_frames : int
        At most this many document frames per chunk (bounds the memory to about
        ``query frames * chunk_frames`` floats); a longer document is a chunk of its own.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> query = rng.standard_normal((6, 4))
    >>> documents = [rng.standard_normal((9, 4)), np.concatenate([rng.standard_normal((3, 4)), query])]
    >>> scores = DocumentArchive(documents, chunk_frames=5).scores(query)
    >>> bool(scores[1] > scores[0]), float(scores[1])
    (True, 0.0)
    """

    SEPARATOR = 2

    def __init__(self, documents, chunk_frames=50000):
        self.lengths = np.array([len(document) for document in documents], dtype=np.int64)
        if len(documents) == 0 or np.any(self.lengths < 1):
            raise ValueError("DocumentArchive: give at least one document, each with at least one frame")
        self.frames = _unit_rows(np.concatenate([np.asarray(d, dtype=np.float64) for d in documents]))
        self.frames = self.frames.astype(np.float32)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        self.chunks, first, size = [], 0, 0
        for index, length in enumerate(self.lengths):
            if size and size + length > chunk_frames:
                self.chunks.append((first, index))
                first, size = index, 0
            size += int(length)
        self.chunks.append((first, len(self.lengths)))

    def __len__(self):
        return len(self.lengths)

    def scores(self, query, minmax=True, min_query_frames=MIN_QUERY_FRAMES):
        """``[len(self)]`` scores (-normalised DTW cost) of ``query`` (``[N, D]``); higher matches better.

        Queries with fewer than ``min_query_frames`` frames score 0 everywhere (s3prl).
        """
        if len(query) < min_query_frames:
            return np.zeros(len(self))
        query = _unit_rows(query).astype(np.float32)
        scores = np.empty(len(self))
        for first, last in self.chunks:
            lengths = self.lengths[first:last]
            frames = self.frames[self.offsets[first] : self.offsets[last]]
            distance = np.expm1(np.clip(1.0 - query @ frames.T, 0.0, 2.0)).astype(np.float64)
            if minmax:
                starts = self.offsets[first:last] - self.offsets[first]
                low = np.repeat(np.minimum.reduceat(distance, starts, axis=1), lengths, axis=1)
                high = np.repeat(np.maximum.reduceat(distance, starts, axis=1), lengths, axis=1)
                distance = _minmax_rows(distance, low, high)
            laid_starts = np.concatenate([[0], np.cumsum(lengths + self.SEPARATOR)[:-1]])
            laid_out = np.full((len(query), int(lengths.sum() + self.SEPARATOR * len(lengths))), np.inf)
            columns = np.concatenate([start + np.arange(length) for start, length in zip(laid_starts, lengths)])
            laid_out[:, columns] = distance
            # 0.0 - cost, not -cost: a perfect match (cost 0) scores +0.0, never -0.0
            scores[first:last] = 0.0 - np.minimum.reduceat(subsequence_dtw_cost(laid_out), laid_starts)
        return scores


def search_scores(query, documents, minmax=True, min_query_frames=MIN_QUERY_FRAMES):
    """Scores (-DTW cost) of one query against every document (see :class:`DocumentArchive`).

    Arguments
    ---------
    query : numpy.ndarray
        ``[N, D]`` (standardised) features.
    documents : list of numpy.ndarray
        ``[M_k, D]`` features.
    minmax : bool
        Per-row min-max normalisation of each (query, document) distance matrix.
    min_query_frames : int
        Queries with fewer frames score 0 against every document (s3prl).

    Returns
    -------
    numpy.ndarray
        ``[len(documents)]`` scores; higher is a better match.

    Example
    -------
    >>> search_scores(np.eye(4)[:2], [np.eye(4), np.eye(4)[::-1]], min_query_frames=1).round(3).tolist()
    [0.0, -0.5]
    """
    return DocumentArchive(documents).scores(query, minmax=minmax, min_query_frames=min_query_frames)


def normalize_query_scores(scores, eps=1e-12):
    """Z-normalises one query's scores over the documents (s3prl); constant scores give zeros.

    Example
    -------
    >>> normalize_query_scores(np.array([1.0, 2.0, 3.0])).round(3).tolist()
    [-1.225, 0.0, 1.225]
    >>> normalize_query_scores(np.zeros(3)).tolist()
    [0.0, 0.0, 0.0]
    """
    scores = np.asarray(scores, dtype=np.float64)
    std = scores.std()
    if std < eps:
        return np.zeros_like(scores)
    return (scores - scores.mean()) / std


def write_stdlist(path, scores, threshold=2.0, system_id="benchmark", language="english"):
    """Writes a NIST STD-2006 stdlist (``benchmark.stdlist.xml``) for the official QUESST scorer.

    Arguments
    ---------
    path : str
        Output file (its folder is created).
    scores : dict
        ``query id -> {document id: score}`` (normalised scores).
    threshold : float
        ``decision="YES"`` when score > threshold (affects only actTWV).
    system_id, language : str
        Root attributes.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "benchmark.stdlist.xml")
    >>> write_stdlist(path, {"quesst14_dev_0001": {"quesst14_00001": 2.5, "quesst14_00002": -0.3}})
    >>> root = ElementTree.parse(path).getroot()
    >>> [(term.get("file"), term.get("score"), term.get("decision")) for term in root.iter("term")]
    [('quesst14_00001', '2.5000', 'YES'), ('quesst14_00002', '-0.3000', 'NO')]
    """
    root = ElementTree.Element(
        "stdlist",
        {
            "termlist_filename": "benchmark.stdlist.xml",
            "indexing_time": "1.00",
            "language": language,
            "index_size": "1",
            "system_id": system_id,
        },
    )
    for query_id, document_scores in scores.items():
        termlist = ElementTree.SubElement(
            root, "detected_termlist", {"termid": query_id, "term_search_time": "1.0", "oov_term_count": "1"}
        )
        for document_id, score in document_scores.items():
            ElementTree.SubElement(
                termlist,
                "term",
                {
                    "file": document_id,
                    "channel": "1",
                    "tbeg": "0.000",
                    "dur": "0.00",
                    "score": f"{float(score):.4f}",
                    "decision": "YES" if score > threshold else "NO",
                },
            )
    ElementTree.indent(root)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    ElementTree.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def read_stdlist(path):
    """``query id -> {document id: (score, decision is YES)}`` of a stdlist file."""
    detections = {}
    for termlist in ElementTree.parse(path).getroot().iter("detected_termlist"):
        found = detections.setdefault(termlist.get("termid"), {})
        for term in termlist.iter("term"):
            found[term.get("file")] = (float(term.get("score")), term.get("decision") == "YES")
    return detections


def _file_stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def read_ground_truth(folder):
    """Targets, queries and documents of a QUESST14 ground-truth folder.

    The folder (``scoring/groundtruth_quesst14_{dev,eval}``) holds ``*.rttm`` (lines ``LEXEME <doc id>
    <channel> <tbeg> <dur> <query id> ...``: the targets), ``*.ecf.xml`` (``<excerpt
    audio_filename=...>``: the documents) and ``*.tlist.xml`` (``<term termid=...>``: the queries).

    Returns
    -------
    dict
        ``targets`` (set of ``(query id, document id)``), ``queries`` (list), ``documents`` (list).
    """
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []

    def one(suffix):
        found = [name for name in names if name.endswith(suffix)]
        if len(found) != 1:
            raise FileNotFoundError(
                f"Ground-truth folder '{folder}' must hold exactly one *{suffix} file (the QUESST14 layout "
                f"scoring/groundtruth_quesst14_<split>/{{quesst14.ecf.xml, quesst14_<split>.rttm, "
                f"quesst14_<split>.tlist.xml}}); found {found}"
            )
        return os.path.join(folder, found[0])

    targets = set()
    with open(one(".rttm"), encoding="utf-8") as fin:
        for line in fin:
            fields = line.split()
            if len(fields) >= 6 and fields[0] == "LEXEME":
                targets.add((fields[5], _file_stem(fields[1])))
    documents = [
        _file_stem(excerpt.get("audio_filename"))
        for excerpt in ElementTree.parse(one(".ecf.xml")).getroot().iter("excerpt")
    ]
    queries = [term.get("termid") for term in ElementTree.parse(one(".tlist.xml")).getroot().iter("term")]
    return {"targets": targets, "queries": queries, "documents": list(dict.fromkeys(documents))}


def term_weighted_value(scores, ground_truth, beta=QUESST14_BETA, missing_score=MISSING_TRIAL_SCORE, decisions=None):
    """Maximum (and actual) term-weighted value over the full ground truth (the SUPERB convention).

    ``TWV(theta) = 1 - mean_q [P_miss(q, theta) + beta * P_FA(q, theta)]`` over the queries with at
    least one target document, ``P_miss = 1 - N_hit / N_target``, ``P_FA = N_FA / (N_docs - N_target)``;
    a trial is a (query, document) pair of the ground truth's queries and documents, detected when its
    score is >= theta. Trials absent from ``scores`` get ``missing_score``. MTWV is the maximum over
    every distinct trial score and "no detection" (TWV 0).

    Arguments
    ---------
    scores : dict
        ``query id -> {document id: score}``.
    ground_truth : dict
        As :func:`read_ground_truth`.
    beta : float
        Weight of false alarms.
    missing_score : float
        Score of trials the system did not output.
    decisions : dict, optional
        ``query id -> {document id: bool}``; when given, ``act_twv`` is the TWV of these decisions.

    Returns
    -------
    dict
        ``mtwv``, ``threshold`` (None when no detection is best), ``act_twv`` (or None),
        ``num_queries`` (with targets), ``num_documents``, ``num_targets``, ``num_scored_queries``.

    Example
    -------
    >>> truth = {"targets": {("q1", "d1"), ("q2", "d2")}, "queries": ["q1", "q2"], "documents": ["d1", "d2", "d3"]}
    >>> result = term_weighted_value({"q1": {"d1": 3.0, "d2": 1.0, "d3": 0.0}}, truth, beta=1.0)
    >>> result["mtwv"], result["threshold"]  # q1 found at theta=3 (TWV 1/2 * 1), q2 never scored
    (0.5, 3.0)
    """
    documents = list(ground_truth["documents"])
    targets = ground_truth["targets"]
    target_counts = {}
    for query_id, document_id in targets:
        target_counts[query_id] = target_counts.get(query_id, 0) + 1
    queries = [query for query in dict.fromkeys(ground_truth["queries"]) if target_counts.get(query)]
    queries += sorted(set(target_counts) - set(queries))
    if not queries:
        raise ValueError("term_weighted_value: the ground truth has no query with a target")
    num_documents = len(documents)
    trial_scores, weights, detected = [], [], []
    for query_id in queries:
        query_scores = scores.get(query_id, {})
        query_decisions = (decisions or {}).get(query_id, {})
        num_targets = target_counts[query_id]
        hit_weight = 1.0 / (len(queries) * num_targets)
        false_alarm_weight = -beta / (len(queries) * max(num_documents - num_targets, 1))
        for document_id in documents:
            trial_scores.append(float(query_scores.get(document_id, missing_score)))
            weights.append(hit_weight if (query_id, document_id) in targets else false_alarm_weight)
            detected.append(bool(query_decisions.get(document_id, False)))
    trial_scores, weights = np.array(trial_scores), np.array(weights)
    order = np.argsort(-trial_scores, kind="stable")
    sorted_scores, cumulative = trial_scores[order], np.cumsum(weights[order])
    # the TWV of threshold theta sums the weights of the trials scoring >= theta: the last of each tie
    last_of_tie = np.append(sorted_scores[1:] != sorted_scores[:-1], True)
    candidates = cumulative[last_of_tie]
    best = int(np.argmax(candidates))
    mtwv, threshold = float(candidates[best]), float(sorted_scores[last_of_tie][best])
    if mtwv <= 0.0:
        mtwv, threshold = 0.0, None
    act_twv = float(np.sum(weights[np.array(detected)])) if decisions is not None else None
    return {
        "mtwv": mtwv,
        "threshold": threshold,
        "act_twv": act_twv,
        "num_queries": len(queries),
        "num_documents": num_documents,
        "num_targets": len(targets),
        "num_scored_queries": sum(1 for query in queries if query in scores),
    }


def target_separation(scores, targets):
    """Mean score of target and of non-target trials among the scored ones, and their AUC.

    Example
    -------
    >>> target_separation({"q": {"a": 2.0, "b": 0.0, "c": 1.0}}, {("q", "a")})
    {'mean_target_score': 2.0, 'mean_nontarget_score': 0.5, 'auc': 1.0}
    """
    target, nontarget = [], []
    for query_id, document_scores in scores.items():
        for document_id, score in document_scores.items():
            (target if (query_id, document_id) in targets else nontarget).append(float(score))
    if not target or not nontarget:
        return {"mean_target_score": None, "mean_nontarget_score": None, "auc": None}
    target, nontarget = np.array(target), np.array(nontarget)
    greater = (target[:, None] > nontarget[None, :]).mean()
    ties = (target[:, None] == nontarget[None, :]).mean()
    return {
        "mean_target_score": float(target.mean()),
        "mean_nontarget_score": float(nontarget.mean()),
        "auc": float(greater + 0.5 * ties),
    }


def qbe_scores(
    query_features,
    document_features,
    minmax=True,
    normalize=True,
    eps=1e-9,
    min_query_frames=MIN_QUERY_FRAMES,
    chunk_frames=50000,
):
    """Standardise, search every query in every document, z-normalise per query (one layer).

    Arguments
    ---------
    query_features, document_features : dict
        ``id -> [frames, dims]`` features of one layer.
    minmax, normalize : bool
        Per-row min-max of the distances; per-query z-normalisation of the scores.
    eps : float or None
        Standard-deviation clamp of :func:`standardize`; None: no standardisation.
    min_query_frames : int
        Shorter queries score 0 against every document.
    chunk_frames : int
        See :class:`DocumentArchive`.

    Returns
    -------
    dict
        ``query id -> {document id: score}``.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> documents = {f"d{i}": rng.standard_normal((12, 3)) for i in range(4)}
    >>> queries = {"q": documents["d2"][3:9] + 0.01}
    >>> scores = qbe_scores(queries, documents)
    >>> max(scores["q"], key=scores["q"].get), abs(sum(scores["q"].values())) < 1e-9  # z-normalised: sum 0
    ('d2', True)
    """
    query_ids, document_ids = list(query_features), list(document_features)
    queries = [query_features[q] for q in query_ids]
    documents = [document_features[d] for d in document_ids]
    if eps is not None:
        queries, documents = standardize(queries, documents, eps=eps)
    archive = DocumentArchive(documents, chunk_frames=chunk_frames)
    results = {}
    for query_id, query in zip(query_ids, queries):
        raw = archive.scores(query, minmax=minmax, min_query_frames=min_query_frames)
        values = normalize_query_scores(raw) if normalize else raw
        if not np.all(np.isfinite(values)):
            raise FloatingPointError(f"Non-finite QbE scores for query {query_id}")
        results[query_id] = dict(zip(document_ids, (float(value) for value in values)))
    return results
