"""make_metric_fixtures.py - BLEU-4 / ROUGE reference values.

Run:  /work/venv/bin/python tests/reference/make_metric_fixtures.py
(nltk 3.9, rouge-chinese 1.0.3, jieba 0.42; llamafactory 0.9.5's formulas)
Writes tests/fixtures/metrics/cases.jsonl: for each (pred, label):
  bleu4                   nltk sentence_bleu on characters, method3 (exact target)
  lf_rouge1/2/l           rouge_chinese on jieba words, as LLaMA-Factory
  ft_rouge1/2/l           rouge_chinese on ft's segmentation (exact target)
and prints how far ft's ROUGE is from LLaMA-Factory's per language.
"""
import json, os, re, random
import jieba
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_chinese import Rouge

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests/fixtures/metrics/cases.jsonl")
SHARED = os.path.join(ROOT, "..", "shared", "data", "llamafactory")


def ft_words(s):
    """ft_segment_words(): ASCII alnum runs (with .digits and %), else one char."""
    return re.findall(r"[A-Za-z0-9]+(?:\.[0-9]+)?%?|[^\s]", s)


def rouge(h_words, r_words):
    if len(" ".join(h_words).split()) == 0 or len(" ".join(r_words).split()) == 0:
        return 0.0, 0.0, 0.0
    sc = Rouge().get_scores(" ".join(h_words), " ".join(r_words))[0]
    return sc["rouge-1"]["f"], sc["rouge-2"]["f"], sc["rouge-l"]["f"]


def perturb(text, rng):
    """A plausible wrong prediction: drop, repeat and swap pieces."""
    chars = list(text)
    for _ in range(max(1, len(chars) // 8)):
        op = rng.random()
        i = rng.randrange(len(chars)) if chars else 0
        if not chars:
            break
        if op < 0.4:
            del chars[i]
        elif op < 0.7:
            chars.insert(i, chars[rng.randrange(len(chars))])
        else:
            j = rng.randrange(len(chars))
            chars[i], chars[j] = chars[j], chars[i]
    return "".join(chars)


def pairs():
    rng = random.Random(7)
    fixed = [
        ("I am ft-bot, a small assistant.", "I am ft-bot, a small assistant made by the ft project."),
        ("", "nonempty"), ("nonempty", ""), ("a", "a"), ("the the the the", "the cat"),
        ("Pi is 3.14 and 50% done", "pi is 3.14, 50% done"), ("你好，世界！", "你好世界"),
        ("我是一个人工智能助手。", "我是人工智能助手，由 ft 项目开发。"), ("abc", "xyz"),
    ]
    yield from (("en" if t[0].isascii() else "zh",) + t for t in fixed)
    for name, lang in (("alpaca_en_demo.json", "en"), ("alpaca_zh_demo.json", "zh")):
        path = os.path.join(SHARED, name)
        if not os.path.exists(path):
            continue
        data = json.load(open(path))[:40]
        for ex in data:
            label = ex["output"][:300]
            yield lang, perturb(label, rng), label


def main():
    jieba.setLogLevel(60)
    rows, diffs = [], {"en": [], "zh": []}
    for lang, pred, label in pairs():
        bleu = sentence_bleu([list(label)], list(pred), smoothing_function=SmoothingFunction().method3)
        lf = rouge(list(jieba.cut(pred)), list(jieba.cut(label)))
        ft = rouge(ft_words(pred), ft_words(label))
        rows.append({"lang": lang, "pred": pred, "label": label, "bleu4": bleu,
                     "lf_rouge1": lf[0], "lf_rouge2": lf[1], "lf_rougel": lf[2],
                     "ft_rouge1": ft[0], "ft_rouge2": ft[1], "ft_rougel": ft[2]})
        diffs[lang].append(max(abs(a - b) for a, b in zip(lf, ft)))
    with open(OUT, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    for lang, d in diffs.items():
        if d:
            print(f"{lang}: {len(d)} cases, ROUGE |ft - llamafactory| mean {sum(d)/len(d):.4f} max {max(d):.4f}")


if __name__ == "__main__":
    main()
