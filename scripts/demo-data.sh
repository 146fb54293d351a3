#!/usr/bin/env bash
# demo-data.sh OUTDIR - write the demo's generated data, deterministically:
#   corpus.jsonl   pretraining text ({"text": ...}), simple English sentences
#   identity.json  alpaca-format SFT set: who the assistant is
#   heldout.jsonl  held-out prompts ({"prompt","label"}) never seen in training
# DEMO_CORPUS_LINES sets the corpus size (default 3000).
# The sft answers name "ft-bot" and "the ft project", which the pretraining
# corpus never mentions, so the base model cannot answer them and the
# tuned one can: accuracy is "answer contains ft-bot".
set -euo pipefail
out=${1:?usage: demo-data.sh OUTDIR}
mkdir -p "$out"

awk -v seed=1234 -v lines="${DEMO_CORPUS_LINES:-3000}" '
function pick(a, n) { return a[int(rand() * n) + 1] }
BEGIN {
	srand(seed)
	ns = split("cat dog bird fish horse teacher farmer child river tree", subj, " ")
	nv = split("sees likes finds watches follows helps hears reads", verb, " ")
	no = split("the ball|a book|the sun|a song|the road|an apple|the moon|a letter", obj, "|")
	na = split("quickly slowly today again quietly happily", adv, " ")
	for (i = 0; i < lines; i++) {
		line = ""
		for (k = 0; k < 3; k++)
			line = line sprintf("The %s %s %s %s. ", pick(subj, ns), pick(verb, nv), pick(obj, no), pick(adv, na))
		gsub(/ $/, "", line)
		printf "{\"text\": \"%s\"}\n", line
	}
}' > "$out/corpus.jsonl"

questions_train=(
	"Who are you?" "What is your name?" "Tell me your name." "Who made you?"
	"Introduce yourself." "What should I call you?" "Who created you?"
	"Are you a person?" "What are you?" "Who built you?" "Say who you are."
	"Please introduce yourself." "Can you tell me who you are?" "Your name, please."
)
questions_heldout=(
	"Hello, who am I talking to?" "Could you introduce yourself?" "What is your name, friend?"
	"Who are you exactly?" "Tell me who made you." "What do people call you?"
)
answer="I am ft-bot, a small assistant made by the ft project."
{
	echo "["
	n=${#questions_train[@]}
	for ((r = 0; r < 8; r++)); do
		for ((i = 0; i < n; i++)); do
			sep=","; [ $r -eq 7 ] && [ $i -eq $((n - 1)) ] && sep=""
			printf '  {"instruction": "%s", "input": "", "output": "%s"}%s\n' \
				"${questions_train[$i]}" "$answer" "$sep"
		done
	done
	echo "]"
} > "$out/identity.json"
for q in "${questions_heldout[@]}"; do
	printf '{"prompt": "%s", "label": "%s"}\n' "$q" "$answer"
done > "$out/heldout.jsonl"
