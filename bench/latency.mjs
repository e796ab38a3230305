// Trigger latency: triggerFlow(flow) -> resolved, N sequential calls, one client (socket reused).
// Driven by bench/latency.py:  node --experimental-websocket bench/latency.mjs URL CLIENT_JS N WARMUP FLOW
const [url, clientPath, n, warmup, flow] = process.argv.slice(2);
const { createClient, triggerFlow } = await import(clientPath);
const client = createClient({ url });
const times = [];
for (let i = 0; i < Number(warmup) + Number(n); i++) {
  const t0 = performance.now();
  await triggerFlow(flow, { i }, { client, timeout: 30_000 });
  const ms = performance.now() - t0;
  if (i >= Number(warmup)) times.push(ms);
}
client.close();
process.stdout.write(JSON.stringify({ times }) + "\n");
