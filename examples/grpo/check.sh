#!/bin/sh
# check.sh - the arithmetic reward for examples/grpo.mk: per JSON line
# {"prompt": ..., "completion": ..., "answer": N} (answer: the dataset's own
# column, passed along as TRL passes extra columns), 1 when the completion's
# first number is N, else 0; one answer per line as it reads.
while IFS= read -r line; do
	want=$(printf '%s\n' "$line" | sed -n 's/.*"answer":\(-\{0,1\}[0-9][0-9]*\).*/\1/p')
	[ -n "$want" ] || { echo "check.sh: no numeric \"answer\" in: $line" >&2; exit 1; }
	got=$(printf '%s\n' "$line" | sed -n 's/.*"completion":"[^0-9"]*\([0-9][0-9]*\).*/\1/p')
	if [ "$got" = "$want" ]; then echo 1; else echo 0; fi
done
