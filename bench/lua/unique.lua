-- Every request a page nobody asked for before (offset BASE+10, BASE+20, ...):
-- every request is a miss.
-- wrk ... -s unique.lua URL -- KEY BASE
dofile(os.getenv("BENCH_LUA") .. "/report.lua")

local headers = { ["content-type"] = "application/json" }
local base, n = 0, 0

init = function(args)
  headers["x-api-key"] = args[1]
  base = tonumber(args[2])
end

request = function()
  n = n + 1
  local body = string.format(
    '{"account_id":"acc-1","action":"get_viewers","params":{"count":10,"offset":%.0f}}',
    base + n * 10)
  return wrk.format("POST", "/v2/profiles", headers, body)
end
