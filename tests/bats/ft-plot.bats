#!/usr/bin/env bats
# ft-plot: flags, outputs, errors, --follow
load helper

P="$FIXTURES/plot"

@test "ft-plot --help has an example and EXIT STATUS" {
	run ft-plot --help
	assert_success
	assert_output --partial "EXIT STATUS"
	assert_output --partial "Example:"
	assert_output --partial "--follow"
}

@test "ft-plot: text plot by default when no -o (not a terminal)" {
	cd "$P"
	run ft-plot --width 70 --height 16 run_a
	assert_success
	assert_line --index 0 "training of run_a: loss"
	assert_output --partial "* smoothed"
	[ "${#lines[@]}" -eq 16 ]
	for l in "${lines[@]}"; do [ "${#l}" -le 70 ]; done
}

@test "ft-plot: stdin, several keys, one panel each" {
	run bash -c "ft-plot --ascii -k loss,lr --height 12 < '$P/run_a/trainer_log.jsonl'"
	assert_success
	[ "${#lines[@]}" -eq 24 ]
	assert_line --index 12 "lr"
}

@test "ft-plot: several runs overlaid with a legend of run names" {
	run ft-plot --width 80 "$P/run_a" "$P/run_b/trainer_log.jsonl"
	assert_success
	assert_output --partial "* run_a"
	assert_output --partial "o run_b"
}

@test "ft-plot: runs with the same directory name are told apart by path" {
	mkdir -p a/lora b/lora
	cp "$P/run_a/trainer_log.jsonl" a/lora/
	cp "$P/run_b/trainer_log.jsonl" b/lora/
	run ft-plot --width 80 a/lora b/lora/trainer_log.jsonl
	assert_success
	assert_output --partial "* a/lora"
	assert_output --partial "o b/lora"
}

@test "ft-plot -o png/svg/pdf" {
	run ft-plot -k loss,eval_loss -o a.png "$P/run_a" "$P/run_b"
	assert_success
	run file a.png
	assert_output --partial "PNG image data, 640 x 960"
	run ft-plot -o a.svg "$P/run_a"
	assert_success
	grep -q '<svg' a.svg
	run ft-plot -o a.pdf "$P/run_a"
	assert_success
	[ "$(head -c 5 a.pdf)" = "%PDF-" ]
	run bash -c "ft-plot -o - --format svg '$P/run_a' | head -c 200"
	assert_output --partial "<svg"
}

@test "ft-plot: bad lines skipped with a count, exit 0" {
	run --separate-stderr ft-plot -o bad.svg "$P/bad"
	assert_success
	[[ "$stderr" == *"skipped 4 bad lines"* ]]
	[[ "$stderr" == *"trainer_log.jsonl:4:"* ]]
	run --separate-stderr ft-plot -q -o bad.svg "$P/bad"
	assert_success
	[ -z "$stderr" ]
}

@test "ft-plot: errors" {
	run -1 ft-plot -o x.svg nonexistent.jsonl
	assert_output --partial "nonexistent.jsonl"
	run -1 ft-plot -k nosuchkey -o x.svg "$P/run_a"
	assert_output --partial "no values for nosuchkey"
	[ ! -e x.svg ]
	run -2 ft-plot -o x.gif "$P/run_a"
	assert_output --partial "unknown image format"
	run -2 ft-plot --bogus "$P/run_a"
	run -2 ft-plot --keys "" "$P/run_a"
	run -2 ft-plot --interval 0 --follow "$P/run_a"
	run -1 bash -c "echo 'garbage' | ft-plot -o x.svg"
	assert_output --partial "skipped 1 bad line"
	assert_output --partial "no values for loss in <stdin>"
	run -1 ft-plot -o /nonexistent/dir/x.png "$P/run_a"
}

@test "ft-plot --follow redraws as the log grows and exits 0 on SIGINT" {
	head -5 "$P/run_a/trainer_log.jsonl" > log.jsonl
	ft-plot --follow --interval 0.1 -o f.svg log.jsonl &
	pid=$!
	for i in $(seq 50); do [ -e f.svg ] && break; sleep 0.1; done
	n1=$(grep 'linejoin:round' f.svg | grep -o ' L ' | wc -l)
	sed -n '6,40p' "$P/run_a/trainer_log.jsonl" >> log.jsonl
	sleep 1
	n2=$(grep 'linejoin:round' f.svg | grep -o ' L ' | wc -l)
	kill -INT $pid
	wait $pid; rc=$?
	[ "$rc" -eq 0 ]
	[ "$n2" -gt "$n1" ]
}

@test "ft-plot --follow on text output redraws and stops at SIGINT" {
	cp "$P/run_a/trainer_log.jsonl" log.jsonl
	run bash -c "timeout --preserve-status -s INT 1 ft-plot --follow --interval 0.2 --height 10 log.jsonl; echo rc=\$?"
	assert_output --partial "training of log.jsonl: loss"
	assert_line "rc=0"
}

@test "ft-plot --follow waits for a log that does not exist yet, restarts on a new log" {
	ft-plot --follow --interval 0.1 -o f.svg out &
	pid=$!
	sleep 0.5
	[ ! -e f.svg ]
	head -30 "$P/run_a/trainer_log.jsonl" > log.tmp
	mkdir out && mv log.tmp out/trainer_log.jsonl
	for i in $(seq 50); do [ -e f.svg ] && break; sleep 0.1; done
	sleep 0.5
	n1=$(grep 'linejoin:round' f.svg | grep -o ' L ' | wc -l)
	head -5 "$P/run_b/trainer_log.jsonl" > out/trainer_log.jsonl   # a new run replaced it
	sleep 1
	n2=$(grep 'linejoin:round' f.svg | grep -o ' L ' | wc -l)
	kill -INT $pid
	wait $pid
	echo "curve segments: $n1 then $n2"
	[ "$n1" -eq 54 ]   # 2 curves of 28 training steps (27 segments each)
	[ "$n2" -eq 8 ]    # 2 curves of 5 steps
}

@test "ft-plot: write errors on stdout are reported (/dev/full)" {
	run -1 bash -c "ft-plot '$P/run_a' > /dev/full"
	assert_output --partial "write error"
	run -1 bash -c "ft-plot -o - '$P/run_a' > /dev/full"
}
