-- Shared by the wrk scripts: unique ids, a constant-rate schedule, ack tracking and the report.
--
-- A script sets `bench.build(seq)` (returning method, path, headers, body for its request
-- number `seq`) and loads this file, which defines wrk's hooks. Settings come from the
-- environment, set by bench/harness.py:
--   BENCH_PHASE    one letter, distinct per load phase, so ids never repeat across phases
--   BENCH_RATE     total requests/s across all threads; 0 or unset: as fast as possible
--   BENCH_THREADS  wrk's -t, to stagger the threads' schedules
--
-- Acks: every request carries X-Request-Id "<phase><thread>-<seq>", which the receiver (and the
-- baseline) echo, so a response names the request it answers even with many connections per
-- thread. A request counts as acked only on a 2xx. done() prints one line "BENCH_RESULT {json}"
-- that tells, per thread, how many requests were issued and which were not acked, so the
-- harness knows exactly which notification ids must be in the topic.
--
-- Fixed rate: wrk is closed-loop, so each thread keeps a schedule (one slot every
-- threads/rate seconds) and delay() waits for the next slot. Latency is measured from the slot's
-- time, not from when the request was written (as wrk2 does), so a stall also counts against
-- the requests that queued behind it. The harness runs one connection per thread here, which
-- makes each thread's schedule that of one connection.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]]

local CLOCK_MONOTONIC = 1
local timespec = ffi.new("bench_timespec")

local function now_us()
    ffi.C.clock_gettime(CLOCK_MONOTONIC, timespec)
    return tonumber(timespec.tv_sec) * 1000000 + tonumber(timespec.tv_nsec) / 1000
end

bench = bench or {}
bench.now_us = now_us
bench.phase = os.getenv("BENCH_PHASE") or "A"
local rate = tonumber(os.getenv("BENCH_RATE") or "0")
local thread_count = tonumber(os.getenv("BENCH_THREADS") or "1")

-- 15-character Salesforce-shaped id: 3-char prefix, phase letter, 3-digit thread, 8-digit number.
-- The receiver turns it into the 18-character form, as it does for any 15-character id.
function bench.id15(prefix, number)
    return string.format("%s%s%03d%08d", prefix, bench.phase, bench.thread, number)
end

-- Main state: number the threads and collect them for done().
local threads = {}

function setup(thread)
    thread:set("bench_thread", #threads)
    table.insert(threads, thread)
end

-- Thread state.
function init(args)
    bench.thread = bench_thread or 0
    issued = 0           -- requests written
    acked = 0            -- 2xx responses
    refused = 0          -- non-2xx responses
    unmatched = 0        -- responses without a recognizable X-Request-Id echo
    outstanding = {}     -- seq -> true while written and not yet answered with a 2xx
    refused_seqs = {}    -- seqs answered with a non-2xx (flat array)
    statuses = {}        -- "503" -> count (flat)
    latencies_us = {}    -- fixed rate only: corrected latency of each answered request
    intended_us = {}     -- fixed rate only: seq -> scheduled start
    if rate > 0 then
        interval_us = 1000000 * thread_count / rate
        next_slot_us = now_us() + interval_us * bench.thread / thread_count
    end
end

if rate > 0 then
    -- wrk's timers have millisecond steps: rounding down sends up to 1 ms early (the latency
    -- then counts from the actual send), where rounding up would bill the timer's lateness to
    -- the server. The schedule itself stays exact, so the rate does not drift.
    function delay()
        local wait_ms = (next_slot_us - now_us()) / 1000
        if wait_ms <= 1 then
            return 0
        end
        return math.floor(wait_ms)
    end
end

function request()
    local seq = issued
    issued = issued + 1
    outstanding[seq] = true
    if rate > 0 then
        -- Behind schedule the slot's time stays the start: the queueing counts as latency.
        local now = now_us()
        intended_us[seq] = math.min(next_slot_us, now)
        next_slot_us = next_slot_us + interval_us
    end
    local method, path, headers, body = bench.build(seq)
    headers["X-Request-Id"] = string.format("%s%d-%d", bench.phase, bench.thread, seq)
    return wrk.format(method, path, headers, body)
end

function response(status, headers, body)
    local echoed = headers["x-request-id"] or headers["X-Request-Id"]
    local seq = echoed and tonumber(echoed:match("-(%d+)$"))
    local key = tostring(status)
    statuses[key] = (statuses[key] or 0) + 1
    if seq == nil or not outstanding[seq] then
        unmatched = unmatched + 1
        return
    end
    outstanding[seq] = nil
    if status >= 200 and status < 300 then
        acked = acked + 1
    else
        refused = refused + 1
        refused_seqs[#refused_seqs + 1] = seq
    end
    if rate > 0 then
        latencies_us[#latencies_us + 1] = now_us() - intended_us[seq]
        intended_us[seq] = nil
    end
end

-- A minimal JSON writer: numbers, strings, flat arrays and flat objects are all we print.
local function json(value)
    local kind = type(value)
    if kind == "number" then
        if value ~= value or value == math.huge or value == -math.huge then
            return "null"
        end
        return string.format("%.17g", value)
    elseif kind == "string" then
        return '"' .. value:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
    elseif kind == "boolean" then
        return tostring(value)
    elseif kind == "table" then
        if #value > 0 or next(value) == nil then
            local parts = {}
            for i = 1, #value do
                parts[i] = json(value[i])
            end
            return "[" .. table.concat(parts, ",") .. "]"
        end
        local parts = {}
        for k, v in pairs(value) do
            parts[#parts + 1] = json(tostring(k)) .. ":" .. json(v)
        end
        return "{" .. table.concat(parts, ",") .. "}"
    end
    return "null"
end

local function keys_of(set)
    local list = {}
    for k in pairs(set) do
        list[#list + 1] = k
    end
    table.sort(list)
    return list
end

local function percentile(sorted, p)
    if #sorted == 0 then
        return nil
    end
    local index = math.max(1, math.ceil(#sorted * p / 100))
    return sorted[index]
end

function done(summary, latency, requests)
    local per_thread = {}
    local corrected = {}
    for i, thread in ipairs(threads) do
        -- thread:get copies flat tables only (nested ones crash wrk 4.1), hence one get each.
        per_thread[i] = json({
            thread = thread:get("bench_thread"),
            issued = thread:get("issued"),
            acked = thread:get("acked"),
            refused = thread:get("refused"),
            unmatched = thread:get("unmatched"),
        }):sub(1, -2)
            .. ',"unanswered":' .. json(keys_of(thread:get("outstanding") or {}))
            .. ',"refused_seqs":' .. json(thread:get("refused_seqs") or {})
            .. ',"statuses":' .. json(thread:get("statuses") or {}) .. "}"
        for _, value in ipairs(thread:get("latencies_us") or {}) do
            corrected[#corrected + 1] = value
        end
    end
    table.sort(corrected)
    local service = {}
    for _, p in ipairs({ 50, 90, 99, 99.9, 99.99 }) do
        service[#service + 1] = latency:percentile(p)
    end
    local scheduled = {}
    for _, p in ipairs({ 50, 90, 99, 99.9, 99.99 }) do
        scheduled[#scheduled + 1] = percentile(corrected, p)
    end
    local report = json({
        duration_us = summary.duration,
        requests = summary.requests,
        bytes = summary.bytes,
        errors_connect = summary.errors.connect,
        errors_read = summary.errors.read,
        errors_write = summary.errors.write,
        errors_status = summary.errors.status,
        errors_timeout = summary.errors.timeout,
        latency_mean_us = latency.mean,
        latency_max_us = latency.max,
        rate = rate,
        samples = #corrected,
    }):sub(1, -2)
        .. ',"percentiles":[50,90,99,99.9,99.99]'
        .. ',"service_us":' .. json(service)
        .. ',"scheduled_us":' .. json(scheduled)
        .. ',"threads":[' .. table.concat(per_thread, ",") .. "]}"
    io.write("BENCH_RESULT ", report, "\n")
end
