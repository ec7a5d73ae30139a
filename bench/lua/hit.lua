-- The README's POST, the same bytes every time: a cache hit once warm.
-- wrk ... -s hit.lua URL -- TENANT_KEY
dofile(os.getenv("BENCH_LUA") .. "/report.lua")

init = function(args)
  wrk.method = "POST"
  wrk.path = "/v2/profiles"
  wrk.headers["content-type"] = "application/json"
  wrk.headers["x-api-key"] = args[1]
  wrk.body = '{"account_id":"acc-1","action":"get_viewers","params":{"count":10,"offset":0}}'
end
