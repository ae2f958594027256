/* Shared command-line conventions: see kf_cli.h. */
#include "kf_cli.h"

#include <string.h>

static const kf_cli_cmd *find(const kf_cli *cli, const char *name)
{
    for (size_t i = 0; name != NULL && i < cli->n_cmds; i++)
        if (strcmp(cli->cmds[i].name, name) == 0)
            return &cli->cmds[i];
    return NULL;
}

/* Prints a command's usage text: a line that starts a form (not with a space) after form, the
 * other lines (their continuations, already indented) after cont. */
static void print_forms(FILE *f, const char *text, const char *first, const char *form, const char *cont)
{
    for (const char *p = text; *p != '\0';) {
        size_t n = strcspn(p, "\n");
        fprintf(f, "%s%.*s\n", p == text ? first : *p == ' ' ? cont : form, (int)n, p);
        p += n + (p[n] == '\n');
    }
}

void kf_cli_usage(const kf_cli *cli, const char *cmd, FILE *f)
{
    const kf_cli_cmd *c = find(cli, cmd);
    char first[64], form[64];
    if (c != NULL) {
        snprintf(first, sizeof(first), "usage: %s ", cli->program);
        snprintf(form, sizeof(form), "       %s ", cli->program);
        print_forms(f, c->usage, first, form, "");
        return;
    }
    fprintf(f, "usage: %s %s", cli->program, cli->options);
    if (cli->n_cmds == 0)
        return;
    fprintf(f, "commands (`%s help COMMAND` or `%s COMMAND --help` for one):\n", cli->program, cli->program);
    for (size_t i = 0; i < cli->n_cmds; i++)
        print_forms(f, cli->cmds[i].usage, "  ", "  ", "  ");
}

int kf_cli_usage_error(const kf_cli *cli, const char *cmd)
{
    kf_cli_usage(cli, cmd, stderr);
    return KF_CLI_EXIT_USAGE;
}

static int has_flag(int argc, char **argv, int from, const char *a, const char *b)
{
    for (int i = from; i < argc && strcmp(argv[i], "--") != 0; i++)
        if (strcmp(argv[i], a) == 0 || (b != NULL && strcmp(argv[i], b) == 0))
            return 1;
    return 0;
}

int kf_cli_command_index(int argc, char **argv, const char *const *with_arg)
{
    int i = 1;
    while (i < argc && argv[i][0] == '-' && argv[i][1] != '\0') {
        if (strcmp(argv[i], "--") == 0)
            return i + 1;
        int skip = 1;
        for (size_t k = 0; with_arg != NULL && with_arg[k] != NULL; k++)
            if (strcmp(argv[i], with_arg[k]) == 0)
                skip = 2;
        i += skip;
    }
    return i < argc ? i : argc;
}

int kf_cli_answer(const kf_cli *cli, int argc, char **argv, int first)
{
    if (has_flag(argc, argv, 1, "--version", NULL)) {
        printf("%s %s\n", cli->program, KF_VERSION);
        return 0;
    }
    const char *cmd = first < argc ? argv[first] : NULL;
    if (cmd != NULL && strcmp(cmd, "help") == 0 && cli->n_cmds > 0) {
        const char *topic = first + 1 < argc ? argv[first + 1] : NULL;
        if (topic != NULL && find(cli, topic) == NULL) {
            fprintf(stderr, "%s: unknown command '%s'; the commands are:", cli->program, topic);
            for (size_t i = 0; i < cli->n_cmds; i++)
                fprintf(stderr, " %s", cli->cmds[i].name);
            fprintf(stderr, "\n");
            return KF_CLI_EXIT_USAGE;
        }
        kf_cli_usage(cli, topic, stdout);
        return 0;
    }
    if (has_flag(argc, argv, 1, "--help", "-h")) {
        kf_cli_usage(cli, cmd, stdout);
        return 0;
    }
    return -1;
}
