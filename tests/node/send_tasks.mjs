// A producer in another language: sends acr-ingest tasks by name, as raw Celery protocol-2 messages
// on kombu's Redis transport, with nothing but a Redis client. The worked example of docs/MESSAGES.md.
//
//   node send_tasks.mjs redis://127.0.0.1:6379/0 < messages.jsonl
//
// Each input line is {"task": "ingest.upload_url", "id": "<a uuid you choose>", "kwargs": {...}}.
// The id becomes the operation's task_id: sending the same id twice runs the job once.
import { createClient } from "redis";
import { randomUUID } from "node:crypto";
import { hostname } from "node:os";
import { createInterface } from "node:readline";

const QUEUE = "ingest"; // jobs; "ingest.poll" is the poll's own

function message({ task, id, kwargs }) {
  // Protocol 2: the body is [args, kwargs, embed]; acr-ingest takes keyword arguments only.
  const body = [[], kwargs, { callbacks: null, errbacks: null, chain: null, chord: null }];
  return {
    body: Buffer.from(JSON.stringify(body), "utf-8").toString("base64"),
    "content-encoding": "utf-8",
    "content-type": "application/json",
    headers: {
      lang: "js",
      task,
      id,
      shadow: null,
      eta: null,
      expires: null,
      group: null,
      group_index: null,
      retries: 0,
      timelimit: [null, null],
      root_id: id,
      parent_id: null,
      argsrepr: "()",
      kwargsrepr: JSON.stringify({ ref: kwargs.ref ?? kwargs.refs ?? null, bucket_id: kwargs.bucket_id ?? null }),
      origin: `node@${hostname()}`,
      ignore_result: true,
    },
    properties: {
      correlation_id: id,
      reply_to: "",
      delivery_mode: 2,
      delivery_info: { exchange: "", routing_key: QUEUE },
      priority: 0,
      body_encoding: "base64",
      delivery_tag: randomUUID(),
    },
  };
}

const url = process.argv[2];
if (!url) {
  console.error("usage: node send_tasks.mjs REDIS_URL < messages.jsonl");
  process.exit(2);
}
const client = createClient({ url });
await client.connect();
let sent = 0;
for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  // kombu's Redis transport: a message is a JSON envelope pushed on the queue's list (consumers BRPOP).
  await client.lPush(QUEUE, JSON.stringify(message(JSON.parse(line))));
  sent += 1;
}
await client.quit();
console.log(JSON.stringify({ sent }));
