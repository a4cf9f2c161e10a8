"""Tests of the `evaluate` metric modules under `metrics/`, against hand-computed values."""

from pathlib import Path

import evaluate
import pytest

import ecf
from metrics.ecpe_pair_f1.ecpe_pair_f1 import score_emotion_cause_pairs


REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_ECF = REPO_ROOT.parent / "shared" / "data" / "ecf"


def submission(pairs_by_conversation):
    """{conversation_ID: pairs} -> the SemEval submission list."""
    return [
        {"conversation_ID": conversation_id, "emotion-cause_pairs": pairs}
        for conversation_id, pairs in pairs_by_conversation.items()
    ]


# ---------------------------------------------------------------------------------------------- emotion classification


@pytest.fixture(scope="module")
def emotion_metric():
    return evaluate.load(str(REPO_ROOT / "metrics" / "emotion_classification"))


def test_emotion_classification_hand_computed(emotion_metric):
    # ids: 0 neutral, 4 joy, 6 surprise
    references = [0, 0, 0, 4, 4, 6]
    predictions = [0, 0, 4, 4, 6, 6]
    results = emotion_metric.compute(predictions=predictions, references=references)
    # accuracy: positions 0, 1, 3, 5 are right -> 4 / 6
    assert results["accuracy"] == pytest.approx(4 / 6)
    # neutral: TP 2, predicted 2, gold 3 -> P 1, R 2/3, F1 = 2 * (2/3) / (5/3) = 0.8
    # joy:     TP 1, predicted 2, gold 2 -> P 1/2, R 1/2, F1 1/2
    # surprise: TP 1, predicted 2, gold 1 -> P 1/2, R 1, F1 = 1 / 1.5 = 2/3
    assert results["f1_neutral"] == pytest.approx(0.8)
    assert results["f1_joy"] == pytest.approx(0.5)
    assert results["f1_surprise"] == pytest.approx(2 / 3)
    assert results["f1_anger"] == 0.0
    # weighted by gold support 3, 2, 1: (3 * 0.8 + 2 * 0.5 + 1 * 2/3) / 6 = 4.0667 / 6 = 0.67778
    assert results["weighted_f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 2 / 3) / 6)
    # macro over the 3 classes present: (0.8 + 0.5 + 2/3) / 3 = 0.65556
    assert results["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    expected_matrix = [[0] * 7 for _ in range(7)]
    expected_matrix[0][0], expected_matrix[0][4] = 2, 1  # gold neutral: 2 right, 1 called joy
    expected_matrix[4][4], expected_matrix[4][6] = 1, 1  # gold joy: 1 right, 1 called surprise
    expected_matrix[6][6] = 1
    assert results["confusion_matrix"] == expected_matrix


def test_emotion_classification_label_names(monkeypatch):
    # Loading by the relative path works from the repository root.
    monkeypatch.chdir(REPO_ROOT)
    metric = evaluate.load("metrics/emotion_classification", label_names=["negative", "positive"])
    # negative: TP 1, predicted 1, gold 2 -> F1 = 2 * 1 * 0.5 / 1.5 = 2/3; positive: TP 1, predicted 2, gold 1 -> 2/3
    results = metric.compute(predictions=[0, 1, 1], references=[0, 0, 1])
    assert results["f1_negative"] == pytest.approx(2 / 3)
    assert results["f1_positive"] == pytest.approx(2 / 3)
    assert results["confusion_matrix"] == [[1, 1], [0, 1]]
    # A compute-time value overrides the load-time one.
    results = metric.compute(predictions=[0, 1], references=[0, 1], label_names=["no", "yes"])
    assert results["f1_yes"] == 1.0 and "f1_positive" not in results


def test_the_metric_modules_labels_are_the_ecf_labels():
    """The metric modules keep their own copy of the labels (evaluate runs them alone): it must be `ecf.EMOTIONS`."""
    from metrics.ecpe_pair_f1.ecpe_pair_f1 import CAUSAL_EMOTIONS
    from metrics.emotion_classification.emotion_classification import DEFAULT_LABEL_NAMES

    assert DEFAULT_LABEL_NAMES == ecf.EMOTIONS
    assert CAUSAL_EMOTIONS == ecf.CAUSAL_EMOTIONS


def test_emotion_classification_rejects_unknown_ids(emotion_metric):
    with pytest.raises(ValueError, match="label ids \\[7\\] outside 0-6"):
        emotion_metric.compute(predictions=[7], references=[0])


def test_confusion_matrix_png_from_metric(emotion_metric, tmp_path):
    results = emotion_metric.compute(predictions=[0, 1, 2, 3, 4, 5, 6], references=[0, 1, 2, 3, 4, 6, 5])
    path = tmp_path / "confusion.png"
    ecf.plot_confusion_matrix(results["confusion_matrix"], ecf.EMOTIONS, path)
    assert path.stat().st_size > 0


# ------------------------------------------------------------------------------------------------------- pair score


GOLD = {
    1: [["3_surprise", "1"], ["5_anger", "4"]],
    2: [["2_joy", "1"], ["2_joy", "2"], ["4_joy", "4"]],
}


def test_perfect_predictions_score_one():
    results = score_emotion_cause_pairs(submission(GOLD), submission(GOLD))
    assert results["weighted_f1"] == 1.0
    assert results["micro_precision"] == results["micro_recall"] == results["micro_f1"] == 1.0
    assert results["f1_joy"] == results["f1_anger"] == results["f1_surprise"] == 1.0
    assert results["f1_fear"] == 0.0  # no gold fear pairs: weight 0 in the weighted F1


def test_right_utterances_wrong_emotion():
    gold = {1: [["3_surprise", "1"], ["5_anger", "4"]]}
    predicted = {1: [["3_joy", "1"], ["5_anger", "4"]]}
    results = score_emotion_cause_pairs(submission(predicted), submission(gold))
    # anger: TP 1 / predicted 1 / gold 1 -> F1 1
    # surprise: predicted 0, gold 1 -> a false negative, F1 0
    # joy: predicted 1, gold 0 -> a false positive, precision 0
    # weighted: 1 * 1/2 (anger) + 0 * 1/2 (surprise) = 0.5; micro: TP 1, predicted 2, gold 2 -> 0.5 / 0.5 / 0.5
    assert results["f1_anger"] == 1.0
    assert results["recall_surprise"] == 0.0 and results["f1_surprise"] == 0.0
    assert results["precision_joy"] == 0.0
    assert results["weighted_f1"] == pytest.approx(0.5)
    assert results["micro_precision"] == results["micro_recall"] == pytest.approx(0.5)


def test_duplicate_pairs_count_once():
    gold = {2: [["2_joy", "1"], ["2_joy", "2"], ["2_joy", "2"]]}
    predicted = {2: [["2_joy", "2"], ["2_joy", "2"], ["2_joy", "2"]]}
    results = score_emotion_cause_pairs(submission(predicted), submission(gold))
    # predicted {2_joy<-2}, gold {2_joy<-1, 2_joy<-2}: P 1/1, R 1/2, F1 = 2 * 0.5 / 1.5 = 2/3
    # (counting the repeats would give P 1/3)
    assert results["precision_joy"] == 1.0
    assert results["recall_joy"] == pytest.approx(0.5)
    assert results["weighted_f1"] == pytest.approx(2 / 3)


def test_weighting_by_gold_pairs():
    gold = {1: [["2_joy", "1"], ["2_joy", "2"], ["3_joy", "3"], ["4_anger", "4"]]}
    predicted = {1: [["2_joy", "1"], ["2_joy", "2"], ["3_joy", "1"]]}
    results = score_emotion_cause_pairs(submission(predicted), submission(gold))
    # joy: TP 2, predicted 3, gold 3 -> P = R = F1 = 2/3; anger: F1 0
    # weighted: 2/3 * 3/4 + 0 * 1/4 = 0.5
    # micro: TP 2, predicted 3, gold 4 -> P 2/3, R 1/2, F1 = 2 * (1/3) / (7/6) = 4/7
    assert results["f1_joy"] == pytest.approx(2 / 3)
    assert results["weighted_f1"] == pytest.approx(0.5)
    assert results["micro_f1"] == pytest.approx(4 / 7)


def test_conversation_missing_from_predictions_counts_as_no_pairs():
    predicted = {2: GOLD[2]}
    results = score_emotion_cause_pairs(submission(predicted), submission(GOLD))
    # joy (3 gold pairs) perfect: F1 1; surprise and anger (1 gold pair each) missed: F1 0
    # weighted: 1 * 3/5 = 0.6; micro: TP 3, predicted 3, gold 5 -> P 1, R 3/5, F1 = 1.2 / 1.6 = 0.75
    assert results["weighted_f1"] == pytest.approx(0.6)
    assert results["micro_precision"] == 1.0
    assert results["micro_recall"] == pytest.approx(0.6)
    assert results["micro_f1"] == pytest.approx(0.75)


def test_conversations_absent_from_gold_are_ignored():
    predicted = {**GOLD, 99: [["1_fear", "1"], ["2_fear", "1"]]}
    results = score_emotion_cause_pairs(submission(predicted), submission(GOLD))
    assert results["weighted_f1"] == 1.0
    assert results["micro_precision"] == 1.0
    assert results["precision_fear"] == 0.0  # the conversation-99 fear pairs were not counted as predictions


def test_malformed_pairs_are_rejected():
    with pytest.raises(ValueError, match="conversation_ID 1: pair .* is not of the form"):
        score_emotion_cause_pairs(submission({1: [["3surprise", "1"]]}), submission(GOLD))
    with pytest.raises(ValueError, match="pairs exist only for"):
        score_emotion_cause_pairs(submission({1: [["3_neutral", "1"]]}), submission(GOLD))
    with pytest.raises(ValueError, match="appears more than once"):
        score_emotion_cause_pairs(submission(GOLD), submission(GOLD) + submission({1: []}))


def test_pair_metric_module_matches_the_function(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    metric = evaluate.load("metrics/ecpe_pair_f1")
    # Same case as test_conversation_missing_from_predictions_counts_as_no_pairs; evaluate needs equal lengths, so
    # the missing conversation 1 is replaced by a conversation that the gold lacks.
    predicted = submission({2: GOLD[2], 99: [["1_fear", "1"]]})
    results = metric.compute(predictions=predicted, references=submission(GOLD))
    assert results == score_emotion_cause_pairs(predicted, submission(GOLD))
    assert results["weighted_f1"] == pytest.approx(0.6)


@pytest.mark.skipif(not SHARED_ECF.is_dir(), reason="the full ECF corpus is not next to the repository")
@pytest.mark.parametrize("offsets, expected", [((0,), 0.57), ((0, 1), 0.65)], ids=["self", "self+previous"])
def test_rule_baselines_with_gold_emotions(offsets, expected):
    """With gold emotions, "each emotion utterance causes itself" (and "... and the previous utterance") reach
    about the pair weighted F1 quoted in docs (ecf-task.md): ~0.57 and ~0.65."""
    gold = ecf.load_conversations(SHARED_ECF / "Subtask_2_train.json")
    predicted = submission(
        {
            c["conversation_ID"]: [
                [f"{u['utterance_ID']}_{u['emotion']}", str(u["utterance_ID"] - offset)]
                for u in c["conversation"]
                if u["emotion"] != "neutral"
                for offset in offsets
                if u["utterance_ID"] - offset >= 1
            ]
            for c in gold
        }
    )
    results = score_emotion_cause_pairs(predicted, gold)
    print(
        f"gold emotions, causes at offsets {offsets}: weighted F1 {results['weighted_f1']:.4f}, "
        f"micro P/R/F1 {results['micro_precision']:.4f}/{results['micro_recall']:.4f}/{results['micro_f1']:.4f}"
    )
    assert results["weighted_f1"] == pytest.approx(expected, abs=0.02)
