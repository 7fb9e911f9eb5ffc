-- wrk: POST the same small request as bench/post.lua, as a Responses request
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"bench","input":[{"role":"user","content":"Say hello in one short sentence."}],"temperature":0.2}'
