/* stage.h - LLaMA-Factory's training stages (and, from format/batch.h,
 * the ignored-label value): the few names every data step shares (preprocessing, packing, the
 * tools), kept apart from pack.h so that code which only needs them does
 * not depend on the packing API.
 */
#ifndef FT_STAGE_H
#define FT_STAGE_H

#include "format/batch.h"   /* FT_IGNORE_INDEX */

enum { FT_STAGE_PT, FT_STAGE_SFT, FT_STAGE_RM, FT_STAGE_DPO, FT_STAGE_KTO,
       FT_STAGE_PPO, FT_STAGE_COUNT };
/* -1 (with a message) for an unknown name. */
int ft_stage_parse(const char *name);
const char *ft_stage_name(int stage);
/* rm and dpo carry a chosen and a rejected sequence per example. */
int ft_stage_pairwise(int stage);

#endif
