/* ft-run - run a LLaMA-Factory experiment (its flags or YAML/JSON config)
 * as an ft pipeline, printing the equivalent shell commands first. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <sys/wait.h>
#include "cli/cli.h"
#include "cli/lfargs.h"
#include "cli/runplan.h"

static void usage(void)
{
	printf("Usage: ft-run [-n] [train|export|chat] [CONFIG.yaml|CONFIG.json] [KEY=VALUE | --KEY VALUE]...\n"
"Run what `llamafactory-cli train|export|chat` would, with ft's tools: the\n"
"settings (a config file, then overrides, later ones winning) are routed to\n"
"ft-tokenize, ft-pack, ft-train, ft-generate and ft-merge, the equivalent\n"
"shell pipeline is printed on stderr, and then it runs (bash, pipefail).\n"
"Intermediate batches go to <output_dir>-data/ (or tokenized_path).  Every\n"
"setting ft cannot run is named at once, each with its reason; settings with\n"
"no effect in ft are named in a note.  The tools run are the ones beside\n"
"ft-run's own executable, then those on PATH.  ft-train and ft-generate get\n"
"--device auto (the GPU when one can run the job, as LLaMA-Factory uses it)\n"
"unless a `device` setting names one (device=cpu).  KEY=null (or ~, or\n"
"nothing) unsets KEY, as OmegaConf reads it: the default applies.\n"
"\n"
"  -n, --dry_run   print the pipeline on stdout and run nothing\n"
"  -q, --quiet     do not echo the pipeline before running it\n"
"  -v, --verbose   also name the settings that have no effect in ft\n"
"  --nproc N, -np N  train data parallel on N ranks: mpirun -np N ft-train ...\n"
"                  (also from LLaMA-Factory's NPROC_PER_NODE, or ray_num_workers\n"
"                  under USE_RAY=1; docs/DISTRIBUTED.md)\n"
"  -h, --help      this help\n"
"\n"
"Exit status: 0 success; 1 a stage failed (its status) or bad config; 2 usage.\n"
"\n"
"Examples:\n"
"  ft-run train examples/lf/qwen_lora_sft.yaml learning_rate=1e-4\n"
"  ft-run -n --stage sft --model_name_or_path M --dataset alpaca_en_demo \\\n"
"      --template llama3 --finetuning_type lora --output_dir saves/x\n"
"  ft-run export --model_name_or_path M --adapter_name_or_path saves/x --export_dir merged\n");
}

/* The pipeline calls ft-tokenize, ft-pack, ... by name: find the ones
 * beside this executable first (as git finds git-* commands), so a
 * checkout's bin/ works without being on PATH. */
static void find_siblings(void)
{
	char self[4096];
	ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
	if (n <= 0) return;
	self[n] = 0;
	char *slash = strrchr(self, '/');
	if (!slash) return;
	*slash = 0;
	const char *path = getenv("PATH");
	char *np = ft_xasprintf("%s%s%s", self, path && *path ? ":" : "", path ? path : "");
	setenv("PATH", np, 1);
	free(np);
}

/* LLaMA-Factory's is_env_enabled: true, y or 1, in any case. */
static int env_enabled(const char *name)
{
	const char *v = getenv(name);
	return v && (!strcasecmp(v, "true") || !strcasecmp(v, "y") || !strcmp(v, "1"));
}

/* LLaMA-Factory launches torchrun when FORCE_TORCHRUN is set (or it sees
 * several GPUs), with NPROC_PER_NODE processes on each of NNODES nodes,
 * and under USE_RAY=1 instead ray_num_workers Ray workers (default 1);
 * ft's ranks are started by mpirun either way.  0: one process. */
static int ranks_from_env(const ft_lfargs *a)
{
	if (env_enabled("USE_RAY")) {
		const ft_lfarg *w = ft_lfargs_find(a, "ray_num_workers");
		int n = w ? (int)ft_parse_int("ray_num_workers", w->value) : 1;
		note("USE_RAY=1: ray_num_workers %d: %d rank%s, started by mpirun instead of Ray", n, n,
		     n == 1 ? "" : "s");
		return n;
	}
	const char *nn = getenv("NNODES"), *np = getenv("NPROC_PER_NODE"), *force = getenv("FORCE_TORCHRUN");
	if (nn && *nn && strcmp(nn, "1"))
		die_usage("NNODES=%s: ft runs across nodes with an MPI hostfile or srun, not torchrun's "
			  "rendezvous: mpirun -np N --hostfile HOSTS ft-train ... (docs/DISTRIBUTED.md)", nn);
	if (np && *np) return (int)ft_parse_int("NPROC_PER_NODE", np);
	if (env_enabled("FORCE_TORCHRUN"))
		die_usage("FORCE_TORCHRUN=%s: set NPROC_PER_NODE=N (or ft-run --nproc N) to start N ranks "
			  "with mpirun", force);
	return 0;
}

/* The ft-train line of the plan, started on nproc ranks. */
static void launch_ranks(ft_runplan *p, int nproc)
{
	for (size_t k = 0; nproc > 1 && k < p->n; k++) {
		if (strncmp(p->lines[k], "ft-train ", 9)) continue;
		char *l = ft_xasprintf("mpirun -np %d %s", nproc, p->lines[k]);
		free(p->lines[k]);
		p->lines[k] = l;
	}
}

static int is_config(const char *s)
{
	size_t n = strlen(s);
	return (n > 5 && !strcmp(s + n - 5, ".yaml")) || (n > 4 && !strcmp(s + n - 4, ".yml")) ||
	       (n > 5 && !strcmp(s + n - 5, ".json"));
}

int main(int argc, char **argv)
{
	ft_cli_init(argc, argv);
	int dry = 0, i = 1, nproc = -1;
	/* ft-run's own options come first; everything after is settings. */
	for (; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "-n") || !strcmp(a, "--dry_run")) dry = 1;
		else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) ft_verbose--;
		else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) ft_verbose++;
		else if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(); return 0; }
		else if ((!strcmp(a, "--nproc") || !strcmp(a, "-np")) && i + 1 < argc)
			nproc = (int)ft_parse_int("nproc", argv[++i]);
		else break;
	}
	const char *command = "train";
	if (i < argc && (!strcmp(argv[i], "train") || !strcmp(argv[i], "export") || !strcmp(argv[i], "chat")))
		command = argv[i++];
	ft_lfargs a = {0};
	if (i < argc && is_config(argv[i]))
		if (ft_lfargs_load_file(&a, argv[i++]) < 0) die_lib();
	if (ft_lfargs_parse_argv(&a, argc - i, argv + i) < 0) die_usage("%s", ft_errmsg());
	if (a.n == 0) die_usage("no settings: give a config file or flags");
	ft_runplan p;
	if (ft_runplan_build(&a, command, &p) < 0) {
		for (size_t k = 0; k < p.n_problems; k++) warn("%s", p.problems[k]);
		die("%s", ft_errmsg());
	}
	if (nproc < 0) nproc = ranks_from_env(&a);
	if (nproc < 0 || nproc > 1000000) die_usage("--nproc %d: give a number of ranks >= 1", nproc);
	if (nproc > 1 && strcmp(command, "train"))
		die_usage("--nproc %d: only training runs on several ranks", nproc);
	launch_ranks(&p, nproc);
	for (size_t k = 0; k < p.n_notes; k++) note("%s", p.notes[k]);
	char *script = ft_runplan_script(&p);
	if (dry) {
		fputs(script, stdout);
	} else {
		if (ft_verbose >= 1) fprintf(stderr, "%s: running:\n%s", ft_progname, script + strlen("set -euo pipefail\n"));
		fflush(NULL);
		find_siblings();
		pid_t pid = fork();
		if (pid == 0) {
			execlp("bash", "bash", "-c", script, (char *)NULL);
			_exit(127);
		}
		int status = 0;
		if (pid < 0 || waitpid(pid, &status, 0) < 0) die("cannot run bash:");
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			free(script);
			die("the pipeline failed (status %d)", WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
		}
	}
	free(script);
	ft_runplan_free(&p);
	ft_lfargs_free(&a);
	return 0;
}
