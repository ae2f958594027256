/* The agent's status file under concurrent writers: at boot one systemd-cryptsetup per volume
 * (the token plugin), the agent and keyfleet-watch all write it, and no queued offline-unlock
 * report may be lost to another writer's read-modify-write. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "agent.h"
#include "state.h"

#include "kf_test_tmpdir.h"

#define WRITERS 4
#define EACH 25

static void concurrent_queue_and_record_lose_nothing(void **state)
{
    (void)state;
    char file[128];
    snprintf(file, sizeof(file), "%s/agent-state.json", tmpdir);
    kfa_config cfg = {.state_file = file};
    pid_t pids[WRITERS];
    for (int w = 0; w < WRITERS; w++) {
        pids[w] = fork();
        assert_true(pids[w] >= 0);
        if (pids[w] == 0) {
            int bad = 0;
            for (int i = 0; i < EACH; i++) {
                kfa_volume v = {.kind = KFA_VOL_LUKS2};
                snprintf(v.id, sizeof(v.id), "vol-%d-%d", w, i);
                snprintf(v.path, sizeof(v.path), "/dev/w%d", w);
                bad |= kfa_state_queue_offline(&cfg, &v, "test") != 0;
                bad |= kfa_state_record(&cfg, v.id, "tpm", "test") != 0;
            }
            _exit(bad);
        }
    }
    for (int w = 0; w < WRITERS; w++) {
        int st = 0;
        assert_int_equal(waitpid(pids[w], &st, 0), pids[w]);
        assert_true(WIFEXITED(st));
        assert_int_equal(WEXITSTATUS(st), 0); /* no writer got -EIO */
    }
    json_t *root = json_load_file(file, 0, NULL);
    assert_non_null(root);
    assert_int_equal(json_array_size(json_object_get(root, "offline_pending")), WRITERS * EACH);
    assert_int_equal(json_object_size(root), WRITERS * EACH + 1); /* one status per volume, and the queue */
    json_decref(root);
}

/* A queued report a coordinator would refuse (here a name past 255 characters, and one that is
 * not an object) is not sent, since it would fail every later heartbeat, but it is counted with
 * the reports the heartbeat takes off the queue; the valid one around them is sent. */
static void refused_reports_are_not_sent(void **state)
{
    (void)state;
    char file[128], name[400];
    snprintf(file, sizeof(file), "%s/agent-state-bad.json", tmpdir);
    memset(name, 'x', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    json_t *root = json_pack("{s:[{s:s, s:i, s:s, s:I, s:s}, i, {s:s, s:i, s:s, s:I, s:s}]}", "offline_pending",
                             "volume_id", "vol-1", "kind", 1, "name", name, "at", (json_int_t)1, "reason", "r", 7,
                             "volume_id", "vol-2", "kind", 2, "name", "tank/home", "at", (json_int_t)2, "reason", "r");
    assert_non_null(root);
    assert_int_equal(json_dump_file(root, file, 0), 0);
    json_decref(root);
    kfa_state_reports s;
    assert_int_equal(kfa_state_reports_read(file, &s), 0);
    assert_int_equal(s.n_offline, 3);
    assert_int_equal(s.n_send, 1);
    assert_string_equal(s.ptrs[0]->volume->id, "vol-2");
    kfa_config cfg = {.state_file = file};
    kfa_state_drop_reported(&cfg, "offline_pending", s.offline, s.n_offline);
    kfa_state_reports_free(&s);
    assert_int_equal(kfa_state_reports_read(file, &s), 0);
    assert_int_equal(s.n_offline, 0);
    kfa_state_reports_free(&s);
    /* A path longer than a coordinator takes is queued cut to 255 bytes, never mid-character. */
    kfa_volume v = {.kind = KFA_VOL_ZFS};
    snprintf(v.id, sizeof(v.id), "vol-3");
    memset(v.path, 'p', 254);
    memcpy(v.path + 254, "\xc3\xa9tail", 7); /* an e-acute across byte 255 */
    assert_int_equal(kfa_state_queue_offline(&cfg, &v, "test"), 0);
    assert_int_equal(kfa_state_reports_read(file, &s), 0);
    assert_int_equal(s.n_offline, 1);
    assert_int_equal(s.n_send, 1);
    assert_int_equal(strlen(s.ptrs[0]->volume->name), 254);
    kfa_state_reports_free(&s);
}

/* Crypt-erase outcomes: a failure repeated alike is queued (and so audited) once, a new one or a
 * success again; a report a coordinator would refuse is not sent. */
static void erase_reports_queued_once(void **state)
{
    (void)state;
    char file[128];
    snprintf(file, sizeof(file), "%s/agent-erase.json", tmpdir);
    remove(file);
    kfa_config cfg = {.state_file = file};
    assert_int_equal(kfa_state_queue_erased(&cfg, "vol-1", false, "no volume with this id on the node"), 0);
    assert_int_equal(kfa_state_queue_erased(&cfg, "vol-1", false, "no volume with this id on the node"), 0);
    assert_int_equal(kfa_state_queue_erased(&cfg, "vol-1", false, "cannot kill keyslot 1"), 0);
    assert_int_equal(kfa_state_queue_erased(&cfg, "vol-1", true, "luks2: 1 keyslot"), 0);
    assert_int_equal(kfa_state_queue_erased(&cfg, "vol-2", false, "bad\001 detail"), 0);
    kfa_state_reports s;
    assert_int_equal(kfa_state_reports_read(file, &s), 0);
    assert_int_equal(s.n_erased, 4);
    assert_int_equal(s.n_erased_send, 3); /* the control character is refused by kf_check_volume_erased */
    assert_false(s.erp[0]->ok);
    assert_string_equal(s.erp[1]->detail, "cannot kill keyslot 1");
    assert_true(s.erp[2]->ok);
    assert_string_equal(s.erp[2]->volume_id, "vol-1");
    kfa_state_drop_reported(&cfg, "erase_pending", s.erased, s.n_erased);
    kfa_state_reports_free(&s);
    /* After the success, the same failure counts as new again. */
    assert_int_equal(kfa_state_queue_erased(&cfg, "vol-1", false, "no volume with this id on the node"), 0);
    assert_int_equal(kfa_state_reports_read(file, &s), 0);
    assert_int_equal(s.n_erased, 1);
    kfa_state_reports_free(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(concurrent_queue_and_record_lose_nothing),
        cmocka_unit_test(refused_reports_are_not_sent),
        cmocka_unit_test(erase_reports_queued_once),
    };
    return cmocka_run_group_tests_name("agent_state", tests, tmpdir_setup, tmpdir_teardown);
}
