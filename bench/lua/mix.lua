-- 90% hits, 10% misses: every tenth request asks for a new page
-- (offset BASE + 10k), the others for the warm page (offset 0).
-- wrk ... -s mix.lua URL -- KEY BASE
dofile(os.getenv("BENCH_LUA") .. "/report.lua")

local headers = { ["content-type"] = "application/json" }
local hit_request, base, n = nil, 0, 0

init = function(args)
  headers["x-api-key"] = args[1]
  base = tonumber(args[2])
  hit_request = wrk.format("POST", "/v2/profiles", headers,
    '{"account_id":"acc-1","action":"get_viewers","params":{"count":10,"offset":0}}')
end

request = function()
  n = n + 1
  if n % 10 ~= 0 then return hit_request end
  local body = string.format(
    '{"account_id":"acc-1","action":"get_viewers","params":{"count":10,"offset":%.0f}}',
    base + n)
  return wrk.format("POST", "/v2/profiles", headers, body)
end
