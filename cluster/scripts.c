/*
 * The Redis store's Lua scripts: every write that must be atomic is one of them (oa_cluster.h says what each
 * guarantees, cluster_internal.h their KEYS, ARGV and replies), and the checks of the replies the node acts on.
 */
#include <hiredis/hiredis.h>

#include "cluster_internal.h"

const char cluster_lua_conf_cas[] =
    "local h = redis.call('HMGET', KEYS[1], 'version', 'conf', 'epoch')\n"
    "local epoch = h[3]\n"
    "if not h[1] then\n"
    "  epoch = ARGV[5]\n"
    "elseif epoch ~= ARGV[1] or tonumber(h[1]) ~= tonumber(ARGV[2]) then\n"
    "  return {0, tonumber(h[1]) or 0, h[2] or '', epoch or ''}\n"
    "end\n"
    "local v = tonumber(ARGV[2]) + 1\n"
    "redis.call('HSET', KEYS[1], 'version', v, 'conf', ARGV[3], 'epoch', epoch, 'seeded', '0')\n"
    "redis.call('PUBLISH', KEYS[2], '{\"type\":\"conf\",\"epoch\":\"' .. epoch .. '\",\"version\":' .. v .. "
    "',\"node\":' .. ARGV[4] .. ',\"conf\":' .. ARGV[3] .. '}')\n"
    "return {1, v, ARGV[3], epoch}\n";

const char cluster_lua_conf_seed[] =
    "local h = redis.call('HMGET', KEYS[1], 'version', 'conf', 'epoch', 'seeded')\n"
    "local mine = tonumber(ARGV[2])\n"
    "local epoch = h[3]\n"
    "local write = 0\n"
    "if not h[1] then\n"
    "  epoch = ARGV[5]\n"
    "  write = 1\n"
    "elseif not epoch then\n"
    "  epoch = ARGV[5]\n"
    "  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seeded', '0')\n"
    "elseif h[4] == '1' and mine > (tonumber(h[1]) or 0) then\n"
    "  write = 2\n"
    "end\n"
    "if write == 0 then return {tonumber(h[1]) or 0, h[2] or '', epoch, 0} end\n"
    "redis.call('HSET', KEYS[1], 'version', mine, 'conf', ARGV[3], 'epoch', epoch, 'seeded', '1')\n"
    "redis.call('PUBLISH', KEYS[2], '{\"type\":\"conf\",\"epoch\":\"' .. epoch .. '\",\"version\":' .. mine .. "
    "',\"node\":' .. ARGV[4] .. ',\"conf\":' .. ARGV[3] .. '}')\n"
    "return {mine, ARGV[3], epoch, write}\n";

const char cluster_lua_lease_renew[] =
    "local cur = redis.call('GET', KEYS[1])\n"
    "if cur == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end\n"
    "if not cur then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end\n"
    "return 0\n";

const char cluster_lua_lease_release[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end\n"
    "return 0\n";

/* A CertID is held while a live entry names it; the records of one that none names any more are deleted, so that
 * a certificate replaced on every node leaves nothing behind. */
const char cluster_lua_heartbeat[] =
    "redis.call('SET', KEYS[1] .. ARGV[1], ARGV[2], 'PX', ARGV[3])\n"
    "redis.call('SADD', KEYS[2], ARGV[1])\n"
    "redis.call('SADD', KEYS[3], ARGV[4])\n"
    "local out, held = {}, {}\n"
    "for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do\n"
    "  local v = redis.call('GET', KEYS[1] .. id)\n"
    "  if v then\n"
    "    out[#out + 1] = v\n"
    "    local ok, e = pcall(cjson.decode, v)\n"
    "    if ok and type(e) == 'table' and type(e.certid) == 'string' then held[e.certid] = true end\n"
    "  else\n"
    "    redis.call('SREM', KEYS[2], id)\n"
    "  end\n"
    "end\n"
    "for _, cid in ipairs(redis.call('SMEMBERS', KEYS[3])) do\n"
    "  if not held[cid] then\n"
    "    redis.call('DEL', KEYS[4] .. 'status:' .. cid, KEYS[4] .. 'sched:' .. cid, KEYS[4] .. 'lease:' .. cid)\n"
    "    redis.call('SREM', KEYS[3], cid)\n"
    "  end\n"
    "end\n"
    "return out\n";

const char cluster_lua_publish[] =
    "local seq = redis.call('INCR', KEYS[1])\n"
    "local msg = '{\"seq\":' .. seq .. ',' .. string.sub(ARGV[1], 2)\n"
    "for i = 3, #KEYS do redis.call('SET', KEYS[i], msg) end\n"
    "redis.call('PUBLISH', KEYS[2], msg)\n"
    "return seq\n";

int cluster_cas_reply_parse(const redisReply *reply, cluster_conf_reply_t *out)
{
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 4 || reply->element[0]->type != REDIS_REPLY_INTEGER ||
        reply->element[1]->type != REDIS_REPLY_INTEGER || reply->element[1]->integer < 0 ||
        reply->element[2]->type != REDIS_REPLY_STRING || reply->element[3]->type != REDIS_REPLY_STRING ||
        (reply->element[3]->len != 0 && !cluster_epoch_valid(reply->element[3]->str, reply->element[3]->len)))
        return -1;
    out->written = reply->element[0]->integer == 1 ? 1 : 0;
    out->version = (uint64_t)reply->element[1]->integer;
    out->conf = reply->element[2]->str;
    out->conf_len = reply->element[2]->len;
    out->epoch = reply->element[3]->str;
    return 0;
}

int cluster_seed_reply_parse(const redisReply *reply, cluster_conf_reply_t *out)
{
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 4 || reply->element[0]->type != REDIS_REPLY_INTEGER ||
        reply->element[0]->integer < 0 || reply->element[1]->type != REDIS_REPLY_STRING ||
        reply->element[2]->type != REDIS_REPLY_STRING ||
        !cluster_epoch_valid(reply->element[2]->str, reply->element[2]->len) ||
        reply->element[3]->type != REDIS_REPLY_INTEGER)
        return -1;
    out->version = (uint64_t)reply->element[0]->integer;
    out->conf = reply->element[1]->str;
    out->conf_len = reply->element[1]->len;
    out->epoch = reply->element[2]->str;
    out->written = (int)reply->element[3]->integer;
    return 0;
}
