/* stage.c - stage names; see stage.h */
#include "data/stage.h"
#include "util/error.h"

#include <string.h>

static const char *const stage_names[FT_STAGE_COUNT] = {
	"pt", "sft", "rm", "dpo", "kto", "ppo",
};

int ft_stage_parse(const char *name)
{
	for (int i = 0; i < FT_STAGE_COUNT; i++)
		if (name && strcmp(name, stage_names[i]) == 0) return i;
	return ft_fail("unknown stage '%s' (expected pt, sft, rm, dpo, kto or ppo)",
		       name ? name : "(none)");
}

const char *ft_stage_name(int stage)
{
	return stage >= 0 && stage < FT_STAGE_COUNT ? stage_names[stage] : "?";
}

int ft_stage_pairwise(int stage)
{
	return stage == FT_STAGE_RM || stage == FT_STAGE_DPO;
}
