/*
 * Cluster mode's decisions (cluster/rules.c) and the decoding of what the store holds (cluster/codec.c), from
 * tables, without Redis and without a loop: which configuration is news, whether a node's own conf message waits
 * for its compare-and-set reply, what a node does with its seed's reply, which record wins by its number, whose
 * records a node skips, the registry view and its capability check, the lease deadline, when a store counts as
 * gone, the backoff, and the strict reading of a stored configuration and of a state record. Each row names its
 * case, so that a failure says which one.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cluster_internal.h"

#define E1 "00000000000000e1"
#define E2 "00000000000000e2"
#define E3 "00000000000000e3"

static int failures;

/* Counts a row that does not hold and says which; the test fails once its whole table has run. */
static void check(bool ok, const char *table, const char *name)
{
    if (ok)
        return;
    print_error("%s: \"%s\" does not hold\n", table, name);
    failures++;
}

static void expect_no_failures(void)
{
    int n = failures;

    failures = 0;
    assert_int_equal(n, 0);
}

static void test_epoch_valid(void **state)
{
    static const struct {
        const char *name, *s;
        int len; /* -1: strlen */
        bool valid;
    } rows[] = {
        {"sixteen hex digits", "0123456789abcdef", -1, true},
        {"one digit", "a", -1, true},
        {"a prefix of a longer text", "abcz", 3, true},
        {"empty", "", -1, false},
        {"NULL", NULL, 0, false},
        {"seventeen digits", "0123456789abcdef0", -1, false},
        {"upper case", "ABCDEF", -1, false},
        {"not hex", "0g", -1, false},
        {"a space", "ab cd", -1, false},
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        size_t len = rows[i].len >= 0 ? (size_t)rows[i].len : strlen(rows[i].s);

        check(cluster_epoch_valid(rows[i].s, len) == rows[i].valid, "epoch_valid", rows[i].name);
    }
    expect_no_failures();
}

/* A configuration seen on a live connection: news or not, and applied from a message or not. */
static void test_conf_news(void **state)
{
    static const struct {
        const char *name;
        const char *epoch, *prev_epoch; /* the node's */
        uint64_t version;
        const char *seen_epoch; /* the message's or the reply's */
        uint64_t seen_version;
        bool own;
        unsigned cas_owed;
        bool news, applies;
    } rows[] = {
        {"same epoch, higher version", E1, "", 4, E1, 5, false, 0, true, true},
        {"same epoch, same version", E1, "", 4, E1, 4, false, 0, false, false},
        {"same epoch, lower version", E1, "", 4, E1, 3, false, 0, false, false},
        {"a new epoch wins at a lower version", E1, "", 9, E2, 1, false, 0, true, true},
        {"a new epoch wins at the same version", E1, "", 9, E2, 9, false, 0, true, true},
        {"the epoch just left never comes back", E2, E1, 1, E1, 99, false, 0, false, false},
        {"the epoch left earlier than the last one does", E3, E2, 1, E1, 1, false, 0, true, true},
        {"a node that never read one takes any", "", "", 0, E1, 0, false, 0, true, true},
        {"an empty stored epoch, as the node's, higher version", "", "", 0, "", 1, false, 0, true, true},
        {"another node's write while a reply is owed", E1, "", 4, E1, 5, false, 1, true, true},
        {"this node's write while its reply is owed", E1, "", 4, E1, 5, true, 1, true, false},
        {"this node's write while two replies are owed", E1, "", 4, E1, 5, true, 2, true, false},
        {"this node's write with no reply owed", E1, "", 4, E1, 5, true, 0, true, true},
        {"this node's stale write with no reply owed", E1, "", 5, E1, 5, true, 0, false, false},
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        cluster_conf_pos_t pos = {rows[i].epoch, rows[i].version, rows[i].prev_epoch};

        check(cluster_conf_is_news(&pos, rows[i].seen_epoch, rows[i].seen_version) == rows[i].news, "conf_is_news",
              rows[i].name);
        check(cluster_conf_message_applies(&pos, rows[i].seen_epoch, rows[i].seen_version, rows[i].own,
                                           rows[i].cas_owed) == rows[i].applies,
              "conf_message_applies", rows[i].name);
    }
    expect_no_failures();
}

static void test_seed_action(void **state)
{
    static const struct {
        const char *name;
        const char *epoch; /* the node's */
        uint64_t version;
        bool conf_live;
        const char *seed_epoch; /* what the seed left in the store */
        uint64_t seed_version;
        bool readable;
        cluster_seed_action_t action;
    } rows[] = {
        {"the store's, higher", E1, 3, false, E1, 5, true, CLUSTER_SEED_ADOPT},
        {"the store's, lower: the store is the truth once read", E1, 5, false, E1, 3, true, CLUSTER_SEED_ADOPT},
        {"the store's, another epoch", E1, 5, false, E2, 1, true, CLUSTER_SEED_ADOPT},
        {"the node's own seed written back", E1, 5, false, E1, 5, true, CLUSTER_SEED_ADOPT},
        {"a message newer than the seed's reply", E1, 6, true, E1, 5, true, CLUSTER_SEED_KEEP},
        {"a message newer, and the store unreadable", E1, 6, true, E1, 5, false, CLUSTER_SEED_KEEP},
        {"a message of the same version as the seed's reply", E1, 5, true, E1, 5, true, CLUSTER_SEED_ADOPT},
        {"a message, but the seed's reply is of another epoch", E1, 6, true, E2, 1, true, CLUSTER_SEED_ADOPT},
        {"unreadable, another version", E1, 3, false, E1, 5, false, CLUSTER_SEED_REBASE},
        {"unreadable, another epoch", E1, 5, false, E2, 5, false, CLUSTER_SEED_REBASE},
        {"unreadable, a node that never read one", "", 0, false, E1, 0, false, CLUSTER_SEED_REBASE},
        {"unreadable, already the node's epoch and version", E1, 5, false, E1, 5, false, CLUSTER_SEED_NOTHING},
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        cluster_conf_pos_t pos = {rows[i].epoch, rows[i].version, ""};

        check(cluster_seed_action(&pos, rows[i].conf_live, rows[i].seed_epoch, rows[i].seed_version,
                                  rows[i].readable) == rows[i].action,
              "seed_action", rows[i].name);
    }
    expect_no_failures();
}

/* Records: the number decides, a pair read back is applied older first, and a node skips some of its own. */
static void test_records(void **state)
{
    static const struct {
        const char *name;
        uint64_t last;
        int64_t seq;
        bool accepted;
        uint64_t last_after;
    } seqs[] = {
        {"the first record after a (re)connection", 0, 1, true, 1},
        {"a newer record", 5, 6, true, 6},
        {"a jump", 5, 50, true, 50},
        {"the same record again", 5, 5, false, 5},
        {"an older record read back after a newer message", 7, 6, false, 7},
        {"a record without a number", 5, 0, true, 5},
        {"a negative number counts as none", 5, -1, true, 5},
    };
    static const struct {
        const char *name;
        int64_t first, second;
        bool swap;
    } pairs[] = {
        {"status older than sched", 3, 5, false},
        {"sched older than status", 5, 3, true},
        {"the same number", 4, 4, false},
        {"the first without a number", 0, 2, false},
        {"the second without a number", 2, 0, true},
    };
    static const struct {
        const char *name;
        bool own, from_store, poller, skipped;
    } own[] = {
        {"another node's, from the channel", false, false, false, false},
        {"another node's, from the store", false, true, false, false},
        {"another node's, from the channel, as poller", false, false, true, false},
        {"another node's, from the store, as poller", false, true, true, false},
        {"its own, from the channel", true, false, false, true},
        {"its own, from the channel, as poller", true, false, true, true},
        {"its own, from the store, as poller: its memory is newer", true, true, true, true},
        {"its own, from the store, as follower: a poller's earlier self", true, true, false, false},
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(seqs) / sizeof(seqs[0]); i++) {
        uint64_t last = seqs[i].last;

        check(cluster_seq_accept(&last, seqs[i].seq) == seqs[i].accepted && last == seqs[i].last_after, "seq_accept",
              seqs[i].name);
    }
    for (i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++)
        check(cluster_records_swap(pairs[i].first, pairs[i].second) == pairs[i].swap, "records_swap", pairs[i].name);
    for (i = 0; i < sizeof(own) / sizeof(own[0]); i++)
        check(cluster_record_skipped(own[i].own, own[i].from_store, own[i].poller) == own[i].skipped,
              "record_skipped", own[i].name);
    expect_no_failures();
}

#define ID_A "0123456789abcdef0123456789abcdef01234567"
#define ID_B "fedcba9876543210fedcba9876543210fedcba98"

/* The records are kept per CertID: which names are CertIDs, the keys made from them, and whose records a node
 * takes (a rolling replacement puts nodes with different certificates on one store). */
static void test_certid(void **state)
{
    static const struct {
        const char *name, *certid;
        bool valid;
    } ids[] = {
        {"forty lowercase hex digits", ID_A, true},
        {"NULL", NULL, false},
        {"empty", "", false},
        {"one digit short", "0123456789abcdef0123456789abcdef0123456", false},
        {"one digit more", ID_A "0", false},
        {"uppercase hex", "0123456789ABCDEF0123456789ABCDEF01234567", false},
        {"a colon, which would split a key", "0123456789abcdef0123456789abcdef0123456:", false},
        {"a glob character", "0123456789abcdef0123456789abcdef0123456*", false},
    };
    static const struct {
        const char *name, *mine, *record;
        bool taken;
    } mine[] = {
        {"a record of the node's CertID", ID_A, ID_A, true},
        {"another certificate's record", ID_A, ID_B, false},
        {"a record without a CertID", ID_A, NULL, false},
        {"a record with an empty CertID", ID_A, "", false},
    };
    char key[CLUSTER_CERTID_KEY_MAX], small[16];
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(ids) / sizeof(ids[0]); i++)
        check(cluster_certid_valid(ids[i].certid) == ids[i].valid, "certid_valid", ids[i].name);
    for (i = 0; i < sizeof(mine) / sizeof(mine[0]); i++)
        check(cluster_record_is_mine(mine[i].mine, mine[i].record) == mine[i].taken, "record_is_mine", mine[i].name);
    expect_no_failures();

    assert_int_equal(cluster_certid_key(key, sizeof(key), CLUSTER_K_STATUS, ID_A), 0);
    assert_string_equal(key, "ocsp-agent:status:" ID_A);
    assert_int_equal(cluster_certid_key(key, sizeof(key), CLUSTER_K_SCHED, ID_B), 0);
    assert_string_equal(key, "ocsp-agent:sched:" ID_B);
    assert_int_equal(cluster_certid_key(key, sizeof(key), CLUSTER_K_LEASE, ID_A), 0);
    assert_string_equal(key, "ocsp-agent:lease:" ID_A);
    /* No key from a name that is not a CertID, and none cut short. */
    assert_int_equal(cluster_certid_key(key, sizeof(key), CLUSTER_K_STATUS, "*"), -1);
    assert_string_equal(key, "");
    assert_int_equal(cluster_certid_key(small, sizeof(small), CLUSTER_K_STATUS, ID_A), -1);
    assert_string_equal(small, "");
}

/* The CertID in a node's registry entry and in its records, where the heartbeat script and the other nodes read it. */
static void test_certid_encoded(void **state)
{
    oa_sched_view_t v;
    json_t *o;
    char *text;

    (void)state;
    text = cluster_node_entry_encode("n1", "http://127.0.0.1:1", "ocsp", ID_A);
    assert_non_null(text);
    o = json_loads(text, 0, NULL);
    free(text);
    assert_string_equal(json_string_value(json_object_get(o, "certid")), ID_A);
    json_decref(o);

    memset(&v, 0, sizeof(v));
    v.state = OA_STATE_RECOVERING;
    text = cluster_state_encode("n1", ID_B, 1, &v);
    assert_non_null(text);
    o = json_loads(text, 0, NULL);
    free(text);
    assert_string_equal(json_string_value(json_object_get(o, "certid")), ID_B);
    json_decref(o);
}

/* The registry view from the heartbeat's entries, and the capability check on it. */
static void test_registry_view(void **state)
{
    static const struct {
        const char *name;
        const char *entries[4]; /* NULL-terminated */
        const char *members, *lacking;
        unsigned live, lacking_count;
        const char *error; /* NULL: the check passes */
    } rows[] = {
        {"no node", {NULL}, "", "", 0, 0, NULL},
        {"every node has ocsp",
         {"{\"node_id\":\"a\",\"capabilities\":[\"ocsp\"]}", "{\"node_id\":\"b\",\"capabilities\":[\"x\",\"ocsp\"]}",
          NULL},
         "a,b",
         "",
         2,
         0,
         NULL},
        {"one node lacks it",
         {"{\"node_id\":\"a\",\"capabilities\":[\"ocsp\"]}", "{\"node_id\":\"b\",\"capabilities\":[]}", NULL},
         "a,b",
         "b",
         2,
         1,
         "OCSP is not supported by every node of the cluster: b lacks the ocsp capability."},
        {"two nodes lack it",
         {"{\"node_id\":\"a\",\"capabilities\":[\"x\"]}", "{\"node_id\":\"b\"}",
          "{\"node_id\":\"c\",\"capabilities\":[\"ocsp\"]}", NULL},
         "a,b,c",
         "a, b",
         3,
         2,
         "OCSP is not supported by every node of the cluster: a, b lack the ocsp capability."},
        {"capabilities not a list",
         {"{\"node_id\":\"a\",\"capabilities\":\"ocsp\"}", NULL},
         "a",
         "a",
         1,
         1,
         "OCSP is not supported by every node of the cluster: a lacks the ocsp capability."},
        {"a capability is matched exactly",
         {"{\"node_id\":\"a\",\"capabilities\":[\"ocsp2\",1,\"OCSP\"]}", NULL},
         "a",
         "a",
         1,
         1,
         "OCSP is not supported by every node of the cluster: a lacks the ocsp capability."},
        {"entries without an id and unreadable ones are no nodes",
         {"{\"capabilities\":[]}", "not json", "{\"node_id\":7}", NULL},
         "",
         "",
         0,
         0,
         NULL},
    };
    size_t i, j;

    (void)state;
    for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        cluster_registry_view_t v;
        oa_error_t err;
        int rc;

        cluster_registry_view_init(&v);
        for (j = 0; rows[i].entries[j] != NULL; j++)
            cluster_registry_view_add(&v, rows[i].entries[j], strlen(rows[i].entries[j]));
        check(strcmp(v.members, rows[i].members) == 0 && strcmp(v.lacking, rows[i].lacking) == 0 &&
                  v.live == rows[i].live && v.lacking_count == rows[i].lacking_count,
              "registry_view", rows[i].name);
        oa_error_clear(&err);
        rc = cluster_capability_check(v.lacking, &err);
        if (rows[i].error == NULL)
            check(rc == 0 && err.code == OA_OK, "capability_check", rows[i].name);
        else
            check(rc == -1 && err.code == OA_E_UNSUPPORTED_BY_CAPABILITY && strcmp(err.text, rows[i].error) == 0,
                  "capability_check", rows[i].name);
    }
    expect_no_failures();
}

static void test_registry_view_limits(void **state)
{
    cluster_registry_view_t a, b;
    char entry[128];
    int i;

    (void)state;
    /* Lists that would overflow are cut, never overrun; every live node is still counted. */
    cluster_registry_view_init(&a);
    for (i = 0; i < 200; i++) {
        snprintf(entry, sizeof(entry), "{\"node_id\":\"node-%03d\",\"capabilities\":[]}", i);
        cluster_registry_view_add(&a, entry, strlen(entry));
    }
    assert_int_equal(a.live, 200);
    assert_int_equal(a.lacking_count, 200);
    assert_int_equal(strlen(a.members), sizeof(a.members) - 1);
    assert_int_equal(strlen(a.lacking), sizeof(a.lacking) - 1);
    /* A change shows in the membership line; the same view does not. */
    b = a;
    assert_false(cluster_registry_view_changed(&a, &b));
    cluster_registry_view_init(&b);
    assert_true(cluster_registry_view_changed(&a, &b));
}

static void test_timing(void **state)
{
    static const struct {
        const char *name;
        uint64_t sent;
        unsigned lease_ms;
        uint64_t deadline;
    } leases[] = {
        {"a tenth short of the lease", 1000, 3000, 3700},
        {"a short lease", 0, 400, 360},
        {"a lease shorter than ten ms", 50, 9, 59},
    };
    static const struct {
        const char *name;
        uint64_t now;
        bool hb_owed;
        uint64_t hb_sent;
        unsigned ttl;
        bool lease_owed;
        uint64_t lease_sent;
        unsigned lease_ms;
        bool stalled;
    } stalls[] = {
        {"nothing owed", 10000, false, 0, 3000, false, 0, 3000, false},
        {"a heartbeat owed within the ttl", 10000, true, 7000, 3000, false, 0, 3000, false},
        {"a heartbeat owed beyond the ttl", 10001, true, 7000, 3000, false, 0, 3000, true},
        {"a lease request owed within the lease", 10000, false, 0, 3000, true, 7000, 3000, false},
        {"a lease request owed beyond the lease", 10001, false, 0, 3000, true, 7000, 3000, true},
        {"both owed, only the lease too long", 5000, true, 4000, 3000, true, 1000, 3000, true},
        {"not owed any more, however old", 99999, false, 1, 3000, false, 1, 3000, false},
    };
    static const struct {
        unsigned from, max, to;
    } backoffs[] = {{100, 2000, 200}, {200, 2000, 400}, {800, 2000, 1600}, {1600, 2000, 2000}, {2000, 2000, 2000},
                    {100, 500, 200}, {400, 500, 500}, {500, 500, 500}};
    size_t i;
    char name[64];

    (void)state;
    for (i = 0; i < sizeof(leases) / sizeof(leases[0]); i++)
        check(cluster_lease_deadline(leases[i].sent, leases[i].lease_ms) == leases[i].deadline, "lease_deadline",
              leases[i].name);
    for (i = 0; i < sizeof(stalls) / sizeof(stalls[0]); i++)
        check(cluster_store_stalled(stalls[i].now, stalls[i].hb_owed, stalls[i].hb_sent, stalls[i].ttl,
                                    stalls[i].lease_owed, stalls[i].lease_sent,
                                    stalls[i].lease_ms) == stalls[i].stalled,
              "store_stalled", stalls[i].name);
    for (i = 0; i < sizeof(backoffs) / sizeof(backoffs[0]); i++) {
        snprintf(name, sizeof(name), "%u ms, then %u ms (at most %u)", backoffs[i].from, backoffs[i].to,
                 backoffs[i].max);
        check(cluster_backoff_next(backoffs[i].from, backoffs[i].max) == backoffs[i].to, "backoff_next", name);
    }
    expect_no_failures();
}

/* A stored configuration is read strictly: a node never puts half a configuration in force. Members it does not
 * know are left for the versions that know them. */
static void test_conf_decode(void **state)
{
    static const struct {
        const char *name, *text;
        int rc;
    } rows[] = {
        {"all five keys",
         "{\"ocsp_functionality\":true,\"query_frequency\":3600,\"response_timeout\":10,\"recovery_frequency\":60,"
         "\"recovery_max_tries\":5}",
         0},
        {"the limits",
         "{\"ocsp_functionality\":false,\"query_frequency\":86400,\"response_timeout\":1,\"recovery_frequency\":86400,"
         "\"recovery_max_tries\":100}",
         0},
        {"a key missing",
         "{\"ocsp_functionality\":true,\"query_frequency\":3600,\"response_timeout\":10,\"recovery_frequency\":60}",
         -1},
        {"below the minimum",
         "{\"ocsp_functionality\":true,\"query_frequency\":59,\"response_timeout\":10,\"recovery_frequency\":60,"
         "\"recovery_max_tries\":5}",
         -1},
        {"above the maximum",
         "{\"ocsp_functionality\":true,\"query_frequency\":3600,\"response_timeout\":61,\"recovery_frequency\":60,"
         "\"recovery_max_tries\":5}",
         -1},
        {"a boolean as a number",
         "{\"ocsp_functionality\":1,\"query_frequency\":3600,\"response_timeout\":10,\"recovery_frequency\":60,"
         "\"recovery_max_tries\":5}",
         -1},
        {"a number as a string",
         "{\"ocsp_functionality\":true,\"query_frequency\":\"3600\",\"response_timeout\":10,\"recovery_frequency\":60,"
         "\"recovery_max_tries\":5}",
         -1},
        {"a member a later version knows, and the writer's responder_url",
         "{\"ocsp_functionality\":true,\"query_frequency\":3600,\"response_timeout\":10,\"recovery_frequency\":60,"
         "\"recovery_max_tries\":5,\"responder_url\":\"http://r/\",\"a_later_key\":{}}",
         0},
        {"a null value",
         "{\"ocsp_functionality\":true,\"query_frequency\":3600,\"response_timeout\":null,\"recovery_frequency\":60,"
         "\"recovery_max_tries\":5}",
         -1},
        {"not an object", "[1,2]", -1},
        {"not JSON", "{", -1},
        {"empty", "", -1},
    };
    oa_conf_t conf, again;
    char *text;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
        check(cluster_conf_decode(rows[i].text, strlen(rows[i].text), &conf) == rows[i].rc, "conf_decode",
              rows[i].name);
    expect_no_failures();
    /* What is encoded reads back the same, without the node's own responder_url. */
    assert_int_equal(cluster_conf_decode(rows[0].text, strlen(rows[0].text), &conf), 0);
    text = cluster_conf_encode(&conf);
    assert_non_null(text);
    assert_null(strstr(text, "responder_url"));
    assert_int_equal(cluster_conf_decode(text, strlen(text), &again), 0);
    assert_int_equal(oa_conf_diff(&conf, &again), 0);
    free(text);
}

static void test_state_decode(void **state)
{
    static const struct {
        const char *name, *text;
        int rc;
        oa_sched_state_t st;
        const char *error_code;
    } rows[] = {
        {"invalidated, with its error",
         "{\"seq\":3,\"type\":\"state\",\"node\":\"a\",\"state\":\"invalidated\",\"recovering\":false,"
         "\"last_error_code\":\"ocsp_timeout\"}",
         0, OA_STATE_INVALIDATED, "ocsp_timeout"},
        {"valid, without an error", "{\"state\":\"valid\"}", 0, OA_STATE_VALID, ""},
        {"an unknown state", "{\"state\":\"sleeping\"}", -1, OA_STATE_VALID, NULL},
        {"no state", "{\"node\":\"a\"}", -1, OA_STATE_VALID, NULL},
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        json_t *o = json_loads(rows[i].text, 0, NULL);
        oa_sched_view_t v;
        int rc = cluster_state_decode(o, &v);

        check(rc == rows[i].rc &&
                  (rc != 0 || (v.state == rows[i].st && strcmp(v.last_error_code, rows[i].error_code) == 0 &&
                               v.last_error != NULL)),
              "state_decode", rows[i].name);
        json_decref(o);
    }
    expect_no_failures();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_epoch_valid),   cmocka_unit_test(test_conf_news),
        cmocka_unit_test(test_seed_action),   cmocka_unit_test(test_records),
        cmocka_unit_test(test_registry_view), cmocka_unit_test(test_registry_view_limits),
        cmocka_unit_test(test_timing),        cmocka_unit_test(test_conf_decode),
        cmocka_unit_test(test_state_decode),  cmocka_unit_test(test_certid),
        cmocka_unit_test(test_certid_encoded),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
