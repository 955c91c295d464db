-- Platform events as JSON, signed with Standard Webhooks (HMAC-SHA256 through libcrypto, which
-- wrk links), one event per request, every EventUuid and webhook-id unique.
--
-- BENCH_SECRET is the whsec_ secret the receiver is configured with; the org header names the
-- example org of examples/org-map.toml.

bench = {}
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
local ffi = require("ffi")
ffi.cdef [[
typedef struct evp_md_st EVP_MD;
const EVP_MD *EVP_sha256(void);
unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len,
                    const unsigned char *data, size_t data_len, unsigned char *md, unsigned int *md_len);
int EVP_EncodeBlock(unsigned char *out, const unsigned char *in, int in_len);
int EVP_DecodeBlock(unsigned char *out, const unsigned char *in, int in_len);
]]

local path = os.getenv("BENCH_PATH") or "/webhooks/salesforce/events"
local org = os.getenv("BENCH_ORG") or "00D1I000003qqqEUAQ"
local secret = (os.getenv("BENCH_SECRET") or ""):gsub("^whsec_", "")

local function base64_decode(text)
    local out = ffi.new("unsigned char[?]", #text)
    local n = ffi.C.EVP_DecodeBlock(out, text, #text)
    -- EVP_DecodeBlock counts padding as zero bytes; drop them.
    local padding = #text:match("=*$")
    return ffi.string(out, n - padding)
end

local key = base64_decode(secret)
local digest = ffi.new("unsigned char[32]")
local digest_length = ffi.new("unsigned int[1]")
local encoded = ffi.new("unsigned char[64]")

local function sign(message)
    ffi.C.HMAC(ffi.C.EVP_sha256(), key, #key, message, #message, digest, digest_length)
    return ffi.string(encoded, ffi.C.EVP_EncodeBlock(encoded, digest, digest_length[0]))
end

local template = '{"channel":"/event/Low_Ink__e","data":{"schema":"dffQ2QLzDNHqwB8_sHMxdA",'
    .. '"payload":{"CreatedDate":"2024-04-09T18:31:40.517Z","CreatedById":"005D0000001cSZs",'
    .. '"Printer_Model__c":"XZO-5","Serial_Number__c":"%d","Ink_Percentage__c":0.2},'
    .. '"event":{"EventUuid":"%s","replayId":%d}}}'

-- The EventUuid becomes ce_id: "bench-<phase>-<thread>-<seq>", which the harness can rebuild.
function bench.build(seq)
    local uuid = string.format("bench-%s-%d-%d", bench.phase, bench.thread, seq)
    local body = string.format(template, seq, uuid, seq)
    local webhook_id = "msg_" .. uuid
    local timestamp = tostring(os.time())
    local headers = {
        ["Content-Type"] = "application/json",
        ["X-Salesforce-Org-Id"] = org,
        ["webhook-id"] = webhook_id,
        ["webhook-timestamp"] = timestamp,
        ["webhook-signature"] = "v1," .. sign(webhook_id .. "." .. timestamp .. "." .. body),
    }
    return "POST", path, headers, body
end

dofile(here .. "common.lua")
