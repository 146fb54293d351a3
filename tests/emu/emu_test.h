/* emu_test.h - what the C++ kernel tests under tests/emu share beside
 * tap.h: reproducible inputs. */
#ifndef FT_EMU_TEST_H
#define FT_EMU_TEST_H

#include <stddef.h>
#include <vector>

/* n floats uniform in [-amp, amp) from the linear congruential generator
 * *state (the C tests' frand), so a failing case reruns with the same data */
static inline std::vector<float> rnd_vec(unsigned &state, size_t n, float amp)
{
	std::vector<float> x(n);
	for (auto &v : x) {
		state = state * 1103515245u + 12345u;
		v = amp * (((state >> 8) & 0xffff) / 32768.0f - 1.0f);
	}
	return x;
}

#endif
