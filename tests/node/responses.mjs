// The openai Node SDK against the gateway: responses.create, plain and
// streamed. Run by tests/python/test_node_sdk.py from a directory holding
// node_modules/openai: `node responses.mjs BASE_URL`. Prints one JSON line.
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.argv[2], apiKey: "unused", maxRetries: 0 });
const plain = await client.responses.create({ model: "fast", input: "Hello from Node." });
const stream = await client.responses.create({ model: "fast", input: "Stream from Node.", stream: true });
const types = [];
let streamed = "";
for await (const event of stream) {
  types.push(event.type);
  if (event.type === "response.output_text.delta") streamed += event.delta;
}
let notFound = null;
try {
  await client.responses.create({ model: "no-such-model", input: "hi" });
} catch (e) {
  notFound = { status: e.status, name: e.constructor.name };
}
console.log(JSON.stringify({ id: plain.id, text: plain.output_text, streamed, types, notFound }));
