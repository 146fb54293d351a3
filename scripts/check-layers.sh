#!/usr/bin/env bash
# check-layers.sh - hold lib/'s includes to the layer rules written in
# docs/ARCHITECTURE.md (lines "- `FOLDER/` may include: A, B" or "nothing").
# Prints TAP, one line per folder plus the checks on the tree as a whole;
# a violation names the file, the line and the folder it may not include.
set -u
cd "$(dirname "$0")/.."
doc=docs/ARCHITECTURE.md
n=0 bad=0
report() {   # report OK? TEXT [DETAILS]
	n=$((n + 1))
	if [ "$1" = 1 ]; then echo "ok $n - $2"
	else echo "not ok $n - $2"; printf '%s\n' "$3" | sed 's/^/# /'; bad=1; fi
}

declare -A allow
while IFS= read -r line; do
	folder=$(sed -n 's/^- `\([a-z]*\)\/` may include: \(.*\)$/\1/p' <<< "$line")
	rest=$(sed -n 's/^- `\([a-z]*\)\/` may include: \(.*\)$/\2/p' <<< "$line")
	[ -n "$folder" ] || continue
	[ "$rest" = nothing ] && rest=""
	allow[$folder]=" $(tr -d ',.' <<< "$rest") "
done < "$doc"

folders=$(cd lib && ls -d */ | tr -d /)
for f in $folders; do
	if [ -z "${allow[$f]+x}" ]; then
		report 0 "lib/$f/ has a rule in $doc" "no line '- \`$f/\` may include: ...'"
		continue
	fi
	errs=""
	while IFS=: read -r file lno inc; do
		[ -n "$file" ] || continue
		target=$(sed -n 's/.*#include "\([^"]*\)".*/\1/p' <<< "$inc")
		case "$target" in
		*/*) dir=${target%%/*} ;;
		*) errs+="$file:$lno: \"$target\" names no folder (include it as \"FOLDER/$target\")"$'\n'; continue ;;
		esac
		[ "$dir" = "$f" ] && continue
		if [[ "$target" == *_internal.h ]]; then
			errs+="$file:$lno: includes $target, private to lib/$dir/"$'\n'
			continue
		fi
		case "${allow[$f]}" in *" $dir "*) continue ;; esac
		rule=$(xargs <<< "${allow[$f]}")
		errs+="$file:$lno: includes $target, but lib/$f/ may include only: ${rule:-nothing}"$'\n'
	done < <(grep -n '#include "' lib/"$f"/* 2>/dev/null)
	report "$([ -z "$errs" ] && echo 1 || echo 0)" "lib/$f/ includes only what its layer allows" "${errs%$'\n'}"
done

loose=$(find lib -maxdepth 1 -type f | sort)
report "$([ -z "$loose" ] && echo 1 || echo 0)" "no file sits directly in lib/" "$loose"

# private headers stay in their folder: tools, tests and benches use the API
priv=$(grep -n '#include "[a-z]*/[a-z_]*_internal.h"' -r tools tests/unit tests/gpu bench 2>/dev/null)
report "$([ -z "$priv" ] && echo 1 || echo 0)" "no *_internal.h is included outside lib/" "$priv"
exit $bad
