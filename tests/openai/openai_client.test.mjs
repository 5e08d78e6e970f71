// The official `openai` npm package against dmoe-router's OpenAI-compatible API, through a real
// swarm. Run by openai_swarm (ctest: openai_client), which starts the swarm and the router,
// publishes the "shift" model (tests/openai/shift_model.h: the next byte is always the last one
// plus one, so every answer is known exactly) and sets DMOE_OPENAI_BASE_URL.
import assert from "node:assert/strict";
import { test } from "node:test";
import OpenAI from "openai";

const baseURL = process.env.DMOE_OPENAI_BASE_URL;
assert.ok(baseURL, "DMOE_OPENAI_BASE_URL is not set: run this through openai_swarm (ctest)");
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0, timeout: 60_000 });

// What the shift model writes after `prompt` in `n` tokens (ASCII below 0x80).
function shift(prompt, n) {
  let last = prompt.charCodeAt(prompt.length - 1);
  let out = "";
  for (let i = 0; i < n; i++) out += String.fromCharCode(++last);
  return out;
}

// The chat template of docs/protocol.md.
const chatPrompt = "user: hi\nassistant: ";

test("models.list names the published token model", async () => {
  const models = [];
  for await (const m of client.models.list()) models.push(m);
  const shiftModel = models.find((m) => m.id === "shift");
  assert.ok(shiftModel, `shift is not listed: ${JSON.stringify(models)}`);
  assert.equal(shiftModel.object, "model");
  assert.equal(shiftModel.owned_by, "dmoe");
  // "created" is the version's unix seconds: published by the fixture moments ago.
  assert.ok(Math.abs(shiftModel.created - Date.now() / 1000) < 3600, `created ${shiftModel.created}`);
});

test("completions: 16 tokens by default, with usage", async () => {
  const c = await client.completions.create({ model: "shift", prompt: "a", temperature: 0 });
  assert.equal(c.object, "text_completion");
  assert.match(c.id, /^cmpl-/);
  assert.equal(c.model, "shift");
  assert.equal(c.choices.length, 1);
  assert.equal(c.choices[0].text, shift("a", 16));
  assert.equal(c.choices[0].finish_reason, "length");
  assert.deepEqual(c.usage, { prompt_tokens: 1, completion_tokens: 16, total_tokens: 17 });
});

test("completions: a stop string ends the text before it", async () => {
  const c = await client.completions.create({
    model: "shift", prompt: "a", max_tokens: 10, stop: ["f"], seed: 3,
  });
  assert.equal(c.choices[0].text, "bcde");
  assert.equal(c.choices[0].finish_reason, "stop");
});

test("completions stream: one chunk per piece, finish_reason on the last", async () => {
  const stream = await client.completions.create({
    model: "shift", prompt: "A", max_tokens: 6, stream: true, seed: 7,
    stream_options: { include_usage: true },
  });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  const withChoice = chunks.filter((c) => c.choices.length === 1);
  assert.equal(withChoice.map((c) => c.choices[0].text).join(""), shift("A", 6));
  assert.ok(withChoice.length >= 2, `${withChoice.length} chunks: the text was not streamed`);
  assert.ok(withChoice.slice(0, -1).every((c) => c.choices[0].finish_reason === null));
  assert.equal(withChoice.at(-1).choices[0].finish_reason, "length");
  assert.ok(chunks.every((c) => c.object === "text_completion" && c.id === chunks[0].id));
  const last = chunks.at(-1);
  assert.equal(last.choices.length, 0);
  assert.deepEqual(last.usage, { prompt_tokens: 1, completion_tokens: 6, total_tokens: 7 });
});

test("chat.completions: the messages through the template", async () => {
  const c = await client.chat.completions.create({
    model: "shift", messages: [{ role: "user", content: "hi" }], max_tokens: 8,
  });
  assert.equal(c.object, "chat.completion");
  assert.match(c.id, /^chatcmpl-/);
  assert.equal(c.choices[0].message.role, "assistant");
  assert.equal(c.choices[0].message.content, shift(chatPrompt, 8));
  assert.equal(c.choices[0].finish_reason, "length");
  assert.deepEqual(c.usage, {
    prompt_tokens: chatPrompt.length, completion_tokens: 8, total_tokens: chatPrompt.length + 8,
  });
});

test("chat.completions stream: the role first, then the content", async () => {
  const stream = await client.chat.completions.create({
    model: "shift", messages: [{ role: "user", content: "hi" }], max_tokens: 5, stream: true,
  });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  assert.ok(chunks.every((c) => c.object === "chat.completion.chunk"));
  assert.equal(chunks[0].choices[0].delta.role, "assistant");
  assert.equal(chunks.map((c) => c.choices[0].delta.content ?? "").join(""), shift(chatPrompt, 5));
  assert.equal(chunks.at(-1).choices[0].finish_reason, "length");
});

test("an unknown model is a 404 the package throws", async () => {
  await assert.rejects(
    client.completions.create({ model: "no-such-model", prompt: "a" }),
    (e) => e instanceof OpenAI.NotFoundError && e.status === 404 && e.code === "model_not_found",
  );
});

test("a value out of range is a 400 naming it", async () => {
  await assert.rejects(
    client.chat.completions.create({
      model: "shift", messages: [{ role: "user", content: "hi" }], temperature: 5,
    }),
    (e) => e instanceof OpenAI.BadRequestError && e.status === 400 && /temperature/.test(e.message),
  );
});
