/* runplan_internal.h - the settings table shared by runplan.c (which
 * builds the pipeline) and runplan_settings.c (routes and checks). */
#ifndef FT_RUNPLAN_INTERNAL_H
#define FT_RUNPLAN_INTERNAL_H

#include "cli/runplan.h"

/* Where a setting goes: T tokenize, P pack, R train, G generate
 * (prediction / chat), M merge; N accepted with no effect (why says so,
 * or the value decides); X refused (why says why). */
enum { FTP_T = 1, FTP_P = 2, FTP_R = 4, FTP_G = 8, FTP_M = 16, FTP_N = 32, FTP_X = 64 };

typedef struct { const char *key; unsigned to; const char *why; } ftp_route;

const ftp_route *ftp_route_find(const char *key);
/* Every setting of a: unknown and refused ones, stage, finetuning_type,
 * template and dataset names, a pre-quantized model, each added to
 * p->problems; the settings without effect to p->notes. */
void ftp_check_settings(const ft_lfargs *a, ft_runplan *p);
/* 1 when the run's deepspeed config (ZeRO stage >= 1) or fsdp option
 * shards something: ft-train then runs with --zero 1. */
int ftp_zero_of(const ft_lfargs *a);
void ftp_plan_problem(ft_runplan *p, char *s);   /* takes s */
void ftp_plan_note(ft_runplan *p, char *s);      /* takes s */

#endif
