#!/bin/sh
# check.sh - the arithmetic reward for examples/grpo.mk: per JSON line
# {"prompt": "...What is A+B?...", "completion": "..."}, 1 when the first
# number of the completion is A+B, else 0; one answer per line as it reads.
while IFS= read -r line; do
	a=$(printf '%s\n' "$line" | sed -n 's/.*What is \([0-9]*\)+\([0-9]*\)?.*/\1 \2/p')
	c=$(printf '%s\n' "$line" | sed -n 's/.*"completion":"[^0-9"]*\([0-9][0-9]*\).*/\1/p')
	set -- $a
	if [ $# -eq 2 ] && [ -n "$c" ] && [ "$c" -eq $(($1 + $2)) ]; then echo 1; else echo 0; fi
done
