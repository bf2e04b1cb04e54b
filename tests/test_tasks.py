"""Any classification task: input templates (several columns, T5's prefixes), label maps, runs that remember them,
and the accuracy before training (``--eval_on_start``). Data is built here: a csv of text pairs with string labels, a
``ClassLabel`` parquet, and local copies of GLUE / BoolQ in the Hub's layout for the commands of docs/tasks.md."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import random
import re
import shlex

import pytest

from hf_peft_suite import evaluate_run, load_run
from hf_peft_suite.arguments import DataArguments
from hf_peft_suite.cli import main
from hf_peft_suite.data import encode_inputs, input_template, load_data
from hf_peft_suite.errors import UsageError
from hf_peft_suite.experiment import run_experiment
from hf_peft_suite.task import InputTemplate, longest_first
from hf_peft_suite.tiny import TINY_DATASET_NAME, make_tiny_review

from .conftest import REPO_ROOT
from .helpers import assert_refused, read_results, write_split_files

TEMPLATE = "rte sentence1: {sentence1} sentence2: {sentence2}"
LABEL_MAP = ["Negative=negative", "Positive=positive"]
QUICK = ["--preset", "tiny", "--max_steps", "2", "--max_eval_samples", "8"]


def pair_rows(count: int, seed: int) -> list[dict]:
    """Text pairs from the tiny vocabulary; the label, written ``Positive`` / ``Negative``, is sentence2's sentiment."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        first, second = rng.randint(0, 1), rng.randint(0, 1)
        rows.append({"sentence1": make_tiny_review(first, rng), "sentence2": make_tiny_review(second, rng),
                     "label": "Positive" if second else "Negative"})
    return rows


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """A folder with train.csv (240 pairs) and test.csv (40 pairs): columns sentence1, sentence2, label."""
    return write_split_files(tmp_path_factory.mktemp("pairs") / "data", pair_rows(240, 0), pair_rows(40, 1))


@pytest.fixture(scope="module")
def t5_tokenizer(t5_small_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(t5_small_path)


# ------------------------------------------------------------------------------------------------------ templates
def test_a_template_names_columns_and_keeps_its_own_text():
    template = InputTemplate.parse("mnli hypothesis: {hypothesis} premise: {premise} {{literal}}")
    assert template.columns == ["hypothesis", "premise"]
    assert template.render({"hypothesis": "H", "premise": "P"}) == "mnli hypothesis: H premise: P {literal}"
    assert InputTemplate.parse(template.text) == template  # the text it records reads back as the same template
    prefix = input_template(DataArguments(source_prefix="sst2 sentence: {x} ", text_column="sentence"))
    assert prefix.columns == ["sentence"] and prefix.render({"sentence": "S"}) == "sst2 sentence: {x} S"
    assert input_template(DataArguments()).text == "{text}" and input_template(DataArguments()).plain


@pytest.mark.parametrize(("settings", "message"), [
    ({"input_template": "rte {sentence1"}, r"cannot be read .*write each column as \{name\}"),
    ({"input_template": "rte {sentence1!r}"}, r"\{sentence1!r\} is not a column"),
    ({"input_template": "a {x}", "source_prefix": "b "}, r"--input_template or --source_prefix, not both"),
    ({"label_words": ["Negative=negative", "positive"]}, r"mixes VALUE=WORD pairs with words alone \('positive'\)"),
    ({"label_words": ["=negative", "1=positive"]}, r"'=negative': give a label value and its word"),
    ({"label_words": ["0=no", "0=yes"]}, r"gives the label value '0' twice"),
])
def test_malformed_templates_and_label_maps_are_refused_as_they_are_parsed(settings, message):
    with pytest.raises(UsageError, match=message):
        DataArguments(**settings)


def test_the_default_input_is_the_text_column_truncated_as_before(tiny_tokenizer):
    """No template, no prefix: the very tokens the code before templates produced (truncated at the end)."""
    from hf_peft_suite.data import clean_review
    from hf_peft_suite.tiny import build_tiny_dataset

    data = load_data(DataArguments(dataset_name=TINY_DATASET_NAME, max_source_length=12), tiny_tokenizer)
    texts = build_tiny_dataset()["test"]["text"]
    before = tiny_tokenizer([clean_review(text) for text in texts], max_length=12, truncation=True).input_ids
    assert sorted(map(tuple, data.eval_dataset["input_ids"])) == sorted(map(tuple, before))
    assert data.input_template == "{text}" and data.label_map == {"neg": "negative", "pos": "positive"}


def test_longest_first_caps_the_longest_fields_at_one_length():
    assert longest_first({"a": 100, "b": 10}, {"a": 1, "b": 1}, 50) == {"a": 40, "b": 10}
    assert longest_first({"a": 100, "b": 100}, {"a": 1, "b": 1}, 51) in ({"a": 26, "b": 25}, {"a": 25, "b": 26})
    assert longest_first({"a": 30, "b": 20, "c": 5}, {"a": 1, "b": 1, "c": 1}, 100) == {"a": 30, "b": 20, "c": 5}
    assert longest_first({"a": 90, "b": 10}, {"a": 2, "b": 1}, 50) == {"a": 20, "b": 10}  # a is used twice


@pytest.mark.parametrize("which", ["tiny", "t5-small"])
def test_truncating_a_10000_word_field_keeps_the_template_and_the_other_field(which, tiny_tokenizer, request):
    """A 10,000-word column beside a short one: the template's own words and the short column survive whole; with
    two long columns both are cut to the same length (within one token)."""
    if which == "tiny":  # a word-level vocabulary: the template's words must be words of it
        tokenizer, template, short = tiny_tokenizer, "movie {sentence1} ending {sentence2} script", "the plot was dull"
    else:
        tokenizer, template, short = request.getfixturevalue("t5_tokenizer"), TEMPLATE, "A man is playing a guitar."
    args = DataArguments(input_template=template, max_source_length=64, clean_text=False)
    long = " ".join(["wonderful"] * 10_000)
    encoded = encode_inputs({"sentence1": [long, long], "sentence2": [short, long]}, args, tokenizer)
    first, both = (tokenizer.decode(ids, skip_special_tokens=True) for ids in encoded["input_ids"])
    assert all(len(ids) <= 64 for ids in encoded["input_ids"])
    assert len(encoded["input_ids"][0]) >= 60  # the budget is used, not thrown away
    opening, middle, closing = re.split(r"\{sentence[12]\}", template)
    assert first.startswith(opening.strip()) and first.endswith(f"{middle}{short}{closing}".rstrip())
    assert first.count("wonderful") > 20
    kept = [part.count("wonderful") for part in both[len(opening):].split(middle.strip())]
    assert both.startswith(opening.strip()) and both.endswith(closing.strip()) and abs(kept[0] - kept[1]) <= 1


def test_a_template_that_leaves_no_room_for_its_columns_is_refused(tiny_tokenizer):
    args = DataArguments(dataset_name=TINY_DATASET_NAME, input_template="the movie the film the plot {text}",
                         max_source_length=7)
    with pytest.raises(UsageError, match=r"takes 7 tokens on its own, leaving 0 of --max_source_length 7"):
        load_data(args, tiny_tokenizer)


def test_the_prefix_is_never_cleaned_or_cut_and_each_column_is_cleaned(t5_tokenizer):
    args = DataArguments(source_prefix="SST2 sentence: ", text_column="sentence", max_source_length=16)
    ids = encode_inputs({"sentence": ["A GREAT film<br />" + " and more" * 100]}, args, t5_tokenizer)["input_ids"][0]
    assert len(ids) == 16 and t5_tokenizer.decode(ids, skip_special_tokens=True).startswith("SST2 sentence: a great film")
    pair = DataArguments(input_template="RTE s1: {a} s2: {b}")
    ids = encode_inputs({"a": ["Hello<br />World"], "b": ["BYE"]}, pair, t5_tokenizer)["input_ids"][0]
    assert t5_tokenizer.decode(ids, skip_special_tokens=True) == "RTE s1: hello world s2: bye"


# ------------------------------------------------------------------------------------------------------ label maps
def test_string_labels_that_are_not_words_are_mapped_to_words(pairs, tiny_tokenizer):
    """The issue's user: labels written Positive / Negative. Their own words do not survive the (lowercasing) tiny
    tokenizer; the words alone are no answer either; a VALUE=WORD map is."""
    base = {"dataset_name": str(pairs), "input_template": TEMPLATE}
    with pytest.raises(UsageError, match=r"'Negative' does not survive .*--label_words VALUE=WORD \(e\.g\. "
                                         r"Negative=negative\)"):
        load_data(DataArguments(**base), tiny_tokenizer)
    with pytest.raises(UsageError, match=r"labels \['Negative', 'Positive'\] .* have no label word.*Negative=WORD"):
        load_data(DataArguments(**base, label_words=["negative", "positive"]), tiny_tokenizer)
    data = load_data(DataArguments(**base, label_words=LABEL_MAP), tiny_tokenizer)
    assert data.label_words == ["negative", "positive"] and data.input_template == TEMPLATE
    assert data.label_map == {"Negative": "negative", "Positive": "positive"}
    targets = [tiny_tokenizer.decode(ids, skip_special_tokens=True) for ids in data.eval_dataset["labels"]]
    expected = [row["label"].lower() for row in pair_rows(40, 1)]
    assert sorted(targets) == sorted(expected) and len(set(targets)) == 2


@pytest.mark.parametrize(("labels", "words", "suffix"), [
    ([0, 1], ["0=negative", "1=positive"], ".csv"),
    ([True, False], ["False=negative", "True=positive"], ".jsonl"),
    ([True, False], ["false=negative", "true=positive"], ".jsonl"),
    (["very negative", "negative", "positive", "very positive"],  # several values share a word: one class
     ["very negative=negative", "negative=negative", "positive=positive", "very positive=positive"], ".csv"),
])
def test_numbers_booleans_and_several_values_per_word_are_mapped(labels, words, suffix, tmp_path, tiny_tokenizer):
    rows = [{"text": make_tiny_review(index % 2, random.Random(index)), "label": labels[index % len(labels)]}
            for index in range(16)]
    folder = write_split_files(tmp_path / "data", rows, rows, suffix)
    data = load_data(DataArguments(dataset_name=str(folder), label_words=words), tiny_tokenizer)
    assert data.label_words == ["negative", "positive"]
    decoded = [tiny_tokenizer.decode(ids, skip_special_tokens=True) for ids in data.train_dataset["labels"]]
    pairs = dict(word.split("=") for word in words)
    assert decoded == [pairs.get(str(row["label"])) or pairs[str(row["label"]).lower()] for row in rows]


def write_classlabel_parquet(folder, names, train_labels, test_labels):
    """train/test parquet files whose label column is a ClassLabel with ``names`` (as datasets writes them)."""
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"premise": Value("string"), "hypothesis": Value("string"), "label": ClassLabel(names=names)})
    folder.mkdir(parents=True)
    for split, labels in (("train", train_labels), ("test", test_labels)):
        rng = random.Random(len(labels))
        rows = {"premise": [make_tiny_review(label % 2, rng) for label in labels],
                "hypothesis": [make_tiny_review(1, rng) for _ in labels], "label": labels}
        Dataset.from_dict(rows, features=features).to_parquet(str(folder / f"{split}.parquet"))
    return folder


@pytest.mark.parametrize("words", [["entailment=positive", "not_entailment=negative"], ["1=negative", "0=positive"]])
def test_a_classlabel_maps_by_its_names_or_ids_in_class_order(words, tmp_path, tiny_tokenizer):
    folder = write_classlabel_parquet(tmp_path / "nli", ["entailment", "not_entailment"], [0, 1] * 6, [1, 0, 1])
    data = load_data(DataArguments(dataset_name=str(folder), input_template="{premise} {hypothesis}",
                                   label_words=words), tiny_tokenizer)
    assert data.label_words == ["positive", "negative"]  # class 0 (entailment) first, whatever order was given
    assert data.label_map == {"entailment": "positive", "not_entailment": "negative"}
    decoded = [tiny_tokenizer.decode(ids, skip_special_tokens=True) for ids in data.train_dataset["labels"]]
    assert decoded == ["positive", "negative"] * 6


@pytest.mark.parametrize(("words", "test_labels", "message"), [
    (["entailment=positive"], [0, 1], r"label values \['not_entailment'\] of column 'label' have no word"),
    (["entailment=positive", "contradiction=negative", "not_entailment=negative"], [0, 1],
     r"maps 'contradiction', which the label column 'label' does not have \(its classes: \['entailment', "
     r"'not_entailment'\], or their ids 0 to 1\)"),
    (None, [0, -1], r"the test split's label column 'label' holds \[-1\].*--eval_split validation"),
])
def test_classlabel_mistakes_are_refused(words, test_labels, message, tmp_path, tiny_tokenizer):
    folder = write_classlabel_parquet(tmp_path / "nli", ["entailment", "not_entailment"], [0, 1] * 4, test_labels)
    args = DataArguments(dataset_name=str(folder), input_template="{premise} {hypothesis}", label_words=words)
    with pytest.raises(UsageError, match=message):
        load_data(args, tiny_tokenizer)


# ------------------------------------------------------------------------------------------ refusals on the CLI
@pytest.mark.parametrize(("template", "message"), [
    ("rte sentence1: {sentence1} sentence2: {hypothesis}",
     r"names a column 'hypothesis' that the train split does not have \(columns: \['sentence1', 'sentence2', "
     r"'label'\]\)"),
    ("rte sentence1: sentence2:", r"names no column; put each column in braces.*\(columns of the train split: "
                                  r"\['sentence1', 'sentence2', 'label'\]\)"),
    ("rte {} {sentence2}", r"has an empty \{\}; name a column in each pair of braces"),
])
def test_a_template_naming_a_missing_or_no_column_is_one_error_line(template, message, pairs, tmp_path, capsys):
    assert_refused([*QUICK, "--dataset_name", pairs, "--input_template", template, "--label_words", *LABEL_MAP,
                    "--output_dir", tmp_path / "out"], message, capsys, pairs, absent=tmp_path / "out")


# ----------------------------------------------------------------------------------- a run on a pair task, used again
@pytest.fixture(scope="module")
def pair_run(pairs, tmp_path_factory):
    """LoRA on the pair task with a template, a label map and --eval_on_start (trained once for the module);
    returns the run folder and what it printed."""
    output_dir = tmp_path_factory.mktemp("pair") / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run_experiment(preset="tiny", method="lora", dataset_name=str(pairs), input_template=TEMPLATE,
                       label_words=LABEL_MAP, eval_on_start=True, max_steps=30, eval_strategy="steps", eval_steps=15,
                       output_dir=str(output_dir))
    return output_dir, printed.getvalue()


def test_a_run_records_its_task_and_the_accuracy_before_training(pair_run):
    output_dir, printed = pair_run
    results = read_results(output_dir)
    assert results["input_template"] == TEMPLATE and results["config"]["data"]["input_template"] == TEMPLATE
    assert results["label_map"] == {"Negative": "negative", "Positive": "positive"}
    start, *trained = results["history"]
    assert (start["epoch"], start["step"], start["train_loss"]) == (0, 0, None)
    assert start["eval_num_scored"] == 40 and results["before_training"]["eval_accuracy"] == start["eval_accuracy"]
    assert [row["step"] for row in trained] == [15, 30] and all(row["train_loss"] for row in trained)
    assert results["best_accuracy"] == max(row["eval_accuracy"] for row in trained)  # chosen after training began
    assert results["best_epoch"] > 0
    table = printed.splitlines()
    row = next(line for line in table if line.split()[:2] == ["0", "-"])  # epoch 0 of the per-epoch table
    assert row.split()[2] == f"{start['eval_accuracy']:.4f}" and row.split()[-2] == "0/30"
    assert f"({start['eval_accuracy']:.4f} before training)" in printed


def test_the_learning_curves_start_at_epoch_0(pair_run):
    from hf_peft_suite.plots import curve_from_runs

    output_dir, _ = pair_run
    curve = curve_from_runs("lora", "lora", "scratch", [read_results(output_dir)])
    assert curve.epochs[0] == 0 and len(curve.epochs) == 3
    assert (output_dir / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_and_predict_apply_the_runs_template_and_label_map(pair_run, pairs, tmp_path, capsys):
    """Evaluated again: the same metrics and predictions. Predicted again from the test file's own columns: the
    same accuracy against its Positive / Negative labels, and the same labels as from Python."""
    output_dir, _ = pair_run
    final = read_results(output_dir)["final_metrics"]
    assert main(["evaluate", str(output_dir), "--output_dir", str(tmp_path / "eval")]) == 0
    again = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert {key: again[key] for key in ("eval_accuracy", "eval_macro_f1", "eval_num_scored")} == \
        {key: final[key] for key in ("eval_accuracy", "eval_macro_f1", "eval_num_scored")}
    assert (tmp_path / "eval" / "eval_predictions.json").read_text() == \
        (output_dir / "eval_predictions.json").read_text()

    assert main(["predict", str(output_dir), "--input_file", str(pairs / "test.csv"), "--output_dir",
                 str(tmp_path / "predict")]) == 0
    lines = [json.loads(line) for line in (tmp_path / "predict" / "predictions.jsonl").read_text().splitlines()]
    rows = pair_rows(40, 1)
    assert [line["text"] for line in lines] == [{"sentence1": r["sentence1"], "sentence2": r["sentence2"]}
                                                for r in rows]
    correct = sum(line["label"] == row["label"].lower() for line, row in zip(lines, rows))
    assert correct / len(rows) == final["eval_accuracy"]
    python = load_run(output_dir).predict([line["text"] for line in lines])
    assert [prediction.label for prediction in python] == [line["label"] for line in lines]
    summary = json.loads((tmp_path / "predict" / "summary.json").read_text())
    assert summary["input_template"] == TEMPLATE and summary["text_column"] is None
    capsys.readouterr()

    assert main(["predict", str(output_dir), "a great film"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.splitlines() == [error] and "give each example as a dict of sentence1, sentence2" in error
    assert "predict RUN_DIR --input_file FILE" in error
    test_only = tmp_path / "one_column.csv"
    test_only.write_text("sentence1\ngreat\n")
    assert main(["predict", str(output_dir), "--input_file", str(test_only), "--output_dir", str(tmp_path / "x")]) == 2
    assert re.search(r"names a column 'sentence2' that .*one_column\.csv does not have \(columns: \['sentence1'\]\)",
                     capsys.readouterr().err)


def test_evaluating_other_data_translates_its_label_map_to_the_runs_words(pair_run, tmp_path):
    output_dir, _ = pair_run
    rows = [{**row, "label": int(row["label"] == "Positive")} for row in pair_rows(12, 2)]
    folder = write_split_files(tmp_path / "numbers", rows, rows)
    reference = evaluate_run(output_dir, eval_file=str(folder / "test.csv"), label_words=["negative", "positive"])
    mapped = evaluate_run(output_dir, eval_file=str(folder / "test.csv"), label_words=["1=positive", "0=negative"])
    assert mapped["eval_num_scored"] == 12 and mapped["eval_accuracy"] == reference["eval_accuracy"]
    with pytest.raises(UsageError, match=r"maps labels to \['yes'\], which the run was not trained to write"):
        evaluate_run(output_dir, eval_file=str(folder / "test.csv"), label_words=["1=yes", "0=negative"])


def test_the_report_and_the_model_card_show_the_task_and_the_start(pair_run, tmp_path, capsys):
    output_dir, _ = pair_run
    results = read_results(output_dir)
    assert main(["report", str(output_dir), "--output_dir", str(tmp_path / "report")]) == 0
    table = (tmp_path / "report" / "comparison.md").read_text()
    header, _, row = table.splitlines()[:3]
    titles = [cell.strip() for cell in header.strip("|").split("|")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[titles.index("before training")] == f"{results['before_training']['eval_accuracy']:.4f}"
    assert f"Task: input `{TEMPLATE}`; labels Negative → `negative`, Positive → `positive`." in table
    card = (output_dir / "model" / "README.md").read_text()
    assert f"| input | `{TEMPLATE}` |" in card and "| label words | Negative → `negative`, Positive → `positive` |" in card
    assert f"| accuracy before training | {results['before_training']['eval_accuracy']:.4f} |" in card
    code = re.search(r"```python\n(.*?)```", card, flags=re.S).group(1)
    assert 'tokenizer(["rte sentence1: <sentence1> sentence2: <sentence2>"]' in code
    capsys.readouterr()
    exec(compile(code, "README.md", "exec"), {})  # the card's own lines load the run and generate
    written = ast.literal_eval(capsys.readouterr().out.strip())
    assert isinstance(written, list) and len(written) == 1 and isinstance(written[0], str)


# ------------------------------------------------------------------------------- a prefix run, and an old run
def test_a_report_of_runs_with_different_tasks_names_each(pair_run, prefix_run, tmp_path, capsys):
    assert main(["report", str(pair_run[0]), str(prefix_run), "--output_dir", str(tmp_path)]) == 0
    table = (tmp_path / "comparison.md").read_text()
    assert "Tasks differ between runs:" in table and f"input `{TEMPLATE}`" in table
    assert "input `the movie {text}`; labels neg → `negative`, pos → `positive`" in table


@pytest.fixture(scope="module")
def prefix_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("prefix") / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        run_experiment(preset="tiny", source_prefix="the movie ", max_steps=20, max_eval_samples=24,
                       eval_strategy="no", output_dir=str(output_dir))
    return output_dir


def test_a_prefix_run_predicts_texts_with_its_prefix(prefix_run, tiny_tokenizer, tmp_path, capsys):
    results = read_results(prefix_run)
    assert results["input_template"] == "the movie {text}"
    run = load_run(prefix_run)
    encoded = encode_inputs({"text": ["Great FILM<br />"]}, run.data_arguments, run.tokenizer, run.input_template)
    assert encoded["input_ids"][0] == tiny_tokenizer("the movie great film").input_ids
    texts = ["a wonderful superb film", "dull and boring"]
    assert main(["predict", str(prefix_run), *texts]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{p.label if p.valid else f'invalid (wrote {p.output!r})'}\t{p.text}" for p in run.predict(texts)]
    (tmp_path / "reviews.csv").write_text("review\n" + "\n".join(texts) + "\n")
    assert main(["predict", str(prefix_run), "--input_file", str(tmp_path / "reviews.csv"), "--text_column", "review",
                 "--output_dir", str(tmp_path / "out")]) == 0
    lines = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["label"] for line in lines] == [p.label for p in run.predict(texts)]
    metrics = evaluate_run(prefix_run)
    assert metrics["eval_accuracy"] == results["final_metrics"]["eval_accuracy"]
    # Other data: --text_column names the column the prefix goes before; the labels are the run's words.
    (tmp_path / "labelled.csv").write_text("review,sentiment\n" + "".join(
        f"{text},{p.label}\n" for text, p in zip(texts, run.predict(texts)) if p.valid))
    other = evaluate_run(prefix_run, eval_file=str(tmp_path / "labelled.csv"), text_column="review",
                         label_column="sentiment")
    assert other["eval_accuracy"] == 1.0 and other["eval_num_scored"] == sum(p.valid for p in run.predict(texts))


TASK_KEYS = {"input_template", "label_map", "before_training"}
TASK_DATA_KEYS = {"input_template", "source_prefix"}


def test_a_run_from_before_tasks_still_loads_evaluates_predicts_and_reports(tmp_path, capsys):
    """tests/data/results_before_task_fields.json is a results.json as the code before this change wrote it (a tiny
    run): a run of today is rewritten to exactly its keys and must still work everywhere."""
    written_before = json.loads((REPO_ROOT / "tests" / "data" / "results_before_task_fields.json").read_text())
    assert not TASK_KEYS & set(written_before) and not TASK_DATA_KEYS & set(written_before["config"]["data"])
    output_dir = tmp_path / "old"
    with contextlib.redirect_stdout(io.StringIO()):
        run_experiment(preset="tiny", max_steps=20, max_eval_samples=24, eval_strategy="no",
                       output_dir=str(output_dir))
    results = read_results(output_dir)
    assert set(written_before) <= set(results) and TASK_KEYS <= set(results)
    assert set(results["config"]["data"]) == set(written_before["config"]["data"]) | TASK_DATA_KEYS
    old = {key: value for key, value in results.items() if key not in TASK_KEYS}
    old["config"]["data"] = {key: value for key, value in old["config"]["data"].items() if key not in TASK_DATA_KEYS}
    (output_dir / "results.json").write_text(json.dumps(old, indent=2))

    metrics = evaluate_run(output_dir, output_dir=tmp_path / "eval")
    assert metrics["eval_accuracy"] == results["final_metrics"]["eval_accuracy"]
    assert (tmp_path / "eval" / "eval_predictions.json").read_text() == \
        (output_dir / "eval_predictions.json").read_text()
    assert load_run(output_dir).input_template.text == "{text}"
    assert main(["predict", str(output_dir), "a wonderful film"]) == 0
    assert main(["report", str(output_dir), "--output_dir", str(tmp_path / "report")]) == 0
    table = (tmp_path / "report" / "comparison.md").read_text()
    assert "before training" not in table and "Task:" not in table
    from hf_peft_suite.hub import model_card

    card = model_card(old, "me/old")
    assert 'tokenizer(["a wonderful and moving film"]' in card and "| input |" not in card


# ------------------------------------------------------------------------------------------- every cell, and docs
@pytest.mark.slow
def test_every_method_and_implementation_trains_and_evaluates_on_a_pair_task(pairs, tmp_path):
    """--method all on the pair task (template, label map, --eval_on_start): every installed cell trains and is
    evaluated before and after training, and the table has a 'before training' column."""
    from hf_peft_suite.comparison import comparison_cells

    output_dir = tmp_path / "all"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["--preset", "tiny", "--method", "all", "--dataset_name", str(pairs), "--input_template", TEMPLATE,
                     "--label_words", *LABEL_MAP, "--eval_on_start", "true", "--max_steps", "6", "--eval_strategy",
                     "no", "--max_eval_samples", "24", "--output_dir", str(output_dir)]) == 0
    cells, _ = comparison_cells()
    rows = {(row["method"], row["implementation"]): row
            for row in json.loads((output_dir / "comparison.json").read_text())}
    assert {cell for cell, row in rows.items() if row["status"] == "ok"} == set(cells)
    for method, implementation in cells:
        results = read_results(output_dir / f"{method}-{implementation}")
        assert results["input_template"] == TEMPLATE and results["label_words"] == ["negative", "positive"]
        assert [row["step"] for row in results["history"]] == [0, 6]
        assert all(row["eval_num_scored"] == 24 for row in results["history"])
        assert rows[(method, implementation)]["accuracy_before_training"] == results["before_training"]["eval_accuracy"]
    assert "| before training |" in (output_dir / "comparison.md").read_text()


def documented_commands(offline: bool) -> list[list[str]]:
    """The run commands of docs/tasks.md (the Hub ones, or the offline ones), as argument lists."""
    text = (REPO_ROOT / "docs" / "tasks.md").read_text()
    start = "HF_HUB_OFFLINE=1 python run_experiment.py " if offline else "python run_experiment.py "
    return [shlex.split(line[len(start):]) for line in text.splitlines() if line.startswith(start)]


def test_the_offline_commands_are_the_hub_commands_on_local_folders():
    hub, offline = documented_commands(offline=False), documented_commands(offline=True)
    assert len(hub) == len(offline) == 3

    def without_data(argv):
        skip = {"--dataset_name", "--dataset_config_name"}
        return [item for index, item in enumerate(argv) if item not in skip and argv[index - 1] not in skip]

    assert [without_data(argv) for argv in hub] == [without_data(argv) for argv in offline]


def glue_like_copies(root):
    """Local folders in the Hub's layout of nyu-mll/glue (sst2, rte) and google/boolq, as docs/tasks.md describes."""
    from datasets import ClassLabel, Dataset, Features, Value

    rng = random.Random(0)

    def write(folder, split, columns, features, size):
        folder.mkdir(parents=True, exist_ok=True)
        rows = {name: [make(index) for index in range(size)] for name, make in columns.items()}
        Dataset.from_dict(rows, features=features).to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))

    sentence = {"sentence": lambda i: make_tiny_review(i % 2, rng).capitalize() + "."}
    sst2 = Features({"sentence": Value("string"), "label": ClassLabel(names=["negative", "positive"]),
                     "idx": Value("int32")})
    for split, size in (("train", 32), ("validation", 8), ("test", 8)):
        label = (lambda i: -1) if split == "test" else (lambda i: i % 2)
        write(root / "glue" / "sst2", split, {**sentence, "label": label, "idx": lambda i: i}, sst2, size)
    rte = Features({"sentence1": Value("string"), "sentence2": Value("string"),
                    "label": ClassLabel(names=["entailment", "not_entailment"]), "idx": Value("int32")})
    for split, size in (("train", 32), ("validation", 8), ("test", 8)):
        label = (lambda i: -1) if split == "test" else (lambda i: i % 2)
        write(root / "glue" / "rte", split, {"sentence1": lambda i: " ".join(["A long premise."] * 200),
                                              "sentence2": lambda i: "A short hypothesis.", "label": label,
                                              "idx": lambda i: i}, rte, size)
    boolq = Features({"question": Value("string"), "answer": Value("bool"), "passage": Value("string")})
    for split, size in (("train", 32), ("validation", 8)):
        write(root / "boolq" / "data", split, {"question": lambda i: "is it a film", "answer": lambda i: i % 2 == 0,
                                                "passage": lambda i: make_tiny_review(i % 2, rng)}, boolq, size)


@pytest.fixture(scope="module")
def tiny_t5_with_the_real_tokenizer(t5_small_path, tmp_path_factory):
    """A tiny random T5 with t5-small's vocabulary, saved beside the real t5-small tokenizer."""
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    from hf_peft_suite.tiny import tiny_t5_config

    folder = tmp_path_factory.mktemp("tiny-t5-real-vocabulary")
    tokenizer = AutoTokenizer.from_pretrained(t5_small_path)
    T5ForConditionalGeneration(tiny_t5_config(vocab_size=32_128)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("index", range(3), ids=["sst2", "rte", "boolq"])
def test_the_documented_t5_commands_run_on_local_copies(index, tiny_t5_with_the_real_tokenizer, tmp_path,
                                                        monkeypatch):
    """docs/tasks.md's offline commands as written (plus a tiny model and a few steps) on local copies in the Hub's
    layout: SST-2 with T5's prefix, RTE with its template (a 600-word sentence1), BoolQ with a boolean label map."""
    glue_like_copies(tmp_path)
    monkeypatch.chdir(tmp_path)
    argv = documented_commands(offline=True)[index]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([*argv, "--model_name_or_path", str(tiny_t5_with_the_real_tokenizer), "--max_steps", "2",
                     "--per_device_train_batch_size", "4", "--output_dir", "run"]) == 0
    results = read_results(tmp_path / "run")
    expected = {0: ("sst2 sentence: {sentence}", ["negative", "positive"]),
                1: (TEMPLATE, ["entailment", "not_entailment"]),
                2: ("boolq passage: {passage} question: {question}", ["False", "True"])}[index]
    assert (results["input_template"], results["label_words"]) == expected
    assert results["history"][0]["step"] == 0 and results["num_eval_examples"] == 8


def test_the_words_t5_wrote_survive_the_t5_small_tokenizer(t5_tokenizer):
    from hf_peft_suite.data import check_words_survive_tokenizer

    text = (REPO_ROOT / "docs" / "tasks.md").read_text()
    table = text[text.index("| task | `--input_template`"):].split("\n\n")[0].splitlines()[2:]
    words = [word.strip() for row in table for word in row.strip("|").split("|")[2].split(",")]
    assert len(table) == 10 and {"not_entailment", "not_equivalent", "not_duplicate", "False", "True"} <= set(words)
    check_words_survive_tokenizer(words, t5_tokenizer)
