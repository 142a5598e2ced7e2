-- wrk script for scripts/bench-flags: every request is a POST for another user.
-- BENCH_KIND=flags: a PostHog /flags body with the project key; BENCH_KIND=ofrep: an OFREP context, key in X-API-Key.
-- BENCH_KEY: the key. The path (and query) come from the URL given to wrk.
local kind = os.getenv("BENCH_KIND") or "flags"
local key = os.getenv("BENCH_KEY") or ""
local plans = { "free", "pro", "team", "enterprise" }
local countries = { "US", "CA", "FR", "DE", "BR", "JP" }
local threads = 0

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
if kind == "ofrep" then
  wrk.headers["X-API-Key"] = key
end

-- runs in the main state, once per thread: give each thread its own user-id prefix
function setup(thread)
  thread:set("thread_id", threads)
  threads = threads + 1
end

local n = 0
function request()
  n = n + 1
  local id = string.format("bench-%d-%d", thread_id or 0, n)
  local plan = plans[n % #plans + 1]
  local country = countries[math.floor(n / 7) % #countries + 1]
  local age = 14 + n % 70
  local body
  if kind == "ofrep" then
    body = string.format('{"context":{"targetingKey":"%s","plan":"%s","country":"%s","age":%d}}', id, plan, country, age)
  else
    body = string.format(
      '{"api_key":"%s","distinct_id":"%s","person_properties":{"plan":"%s","country":"%s","age":%d}}',
      key, id, plan, country, age)
  end
  return wrk.format(nil, nil, nil, body)
end
