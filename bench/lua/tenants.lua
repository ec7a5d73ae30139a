-- The warm page, each request from the next of N tenants (keys PREFIX1 ..
-- PREFIXN, round robin). Requests are built once in init, so wrk does the
-- same work whatever N is.
-- wrk ... -s tenants.lua URL -- N PREFIX
dofile(os.getenv("BENCH_LUA") .. "/report.lua")

local requests, count, i = {}, 0, 0

init = function(args)
  count = tonumber(args[1])
  local body = '{"account_id":"acc-1","action":"get_viewers","params":{"count":10,"offset":0}}'
  for t = 1, count do
    requests[t] = wrk.format("POST", "/v2/profiles",
      { ["content-type"] = "application/json", ["x-api-key"] = args[2] .. t }, body)
  end
end

request = function()
  i = i % count + 1
  return requests[i]
end
