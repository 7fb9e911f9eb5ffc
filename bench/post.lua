-- wrk: POST a small chat completion request
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"bench","messages":[{"role":"user","content":"Say hello in one short sentence."}],"temperature":0.2}'
