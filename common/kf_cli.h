/* The command-line conventions the three binaries share (docs/operations.md, "Command-line
 * conventions"): --version and --help anywhere, `PROGRAM help [COMMAND]`, and each command's usage
 * from one table, printed for --help (stdout, exit 0) and for a usage error (stderr, exit 2). */
#ifndef KF_CLI_H
#define KF_CLI_H

#include <stddef.h>
#include <stdio.h>

#define KF_CLI_EXIT_USAGE 2

typedef struct kf_cli_cmd {
    const char *name;  /* "approve" */
    const char *usage; /* "approve REQUEST_ID [--totp -]\n  what it does\n": its first line follows "usage: PROGRAM " */
} kf_cli_cmd;

typedef struct kf_cli {
    const char *program; /* "keyfleetctl" */
    const char *options; /* the global options part of the synopsis, and their lines ("[-c FILE] COMMAND ...\n  -c ...\n") */
    const kf_cli_cmd *cmds;
    size_t n_cmds;
} kf_cli;

/* Answers what argv asks of the program itself, before any config is read; argv[first] is the
 * command (first >= argc: none). In order:
 *  - "--version" before any "--": prints "PROGRAM VERSION" on stdout, returns 0;
 *  - the command "help [COMMAND]": COMMAND's usage (the program's without one) on stdout, 0; an
 *    unknown COMMAND: an error naming the valid ones on stderr, KF_CLI_EXIT_USAGE;
 *  - "--help" or "-h" before any "--": the command's usage (the program's when there is no
 *    command or it is unknown) on stdout, returns 0.
 * Returns -1 when argv asks for none of these. */
int kf_cli_answer(const kf_cli *cli, int argc, char **argv, int first);

/* The index of the command in argv: the first word after the program's options, skipping the
 * argument of each option named in with_arg (NULL-terminated: {"-c", "--config", NULL}; a
 * "--config=FILE" or "-cFILE" has none to skip). argc when there is no command. */
int kf_cli_command_index(int argc, char **argv, const char *const *with_arg);

/* Prints the usage of cmd (the whole program's when cmd is NULL or unknown) to f. */
void kf_cli_usage(const kf_cli *cli, const char *cmd, FILE *f);

/* For a usage error: prints the usage of cmd to stderr; returns KF_CLI_EXIT_USAGE. */
int kf_cli_usage_error(const kf_cli *cli, const char *cmd);

#endif
