// Module hooks that let Node import an ES module from an http:// URL, as a browser does: the
// module's `import.meta.url` is then that URL. Registered by test/prefix.test.js only.

const HTTP = /^https?:\/\//;

export async function resolve(specifier, context, next) {
  if (HTTP.test(specifier)) return { url: specifier, shortCircuit: true };
  // client.js's own imports (./client/run.js, …) resolve against its http:// URL.
  if (HTTP.test(context.parentURL ?? "") && /^\.{1,2}\//.test(specifier)) {
    return { url: new URL(specifier, context.parentURL).href, shortCircuit: true };
  }
  return next(specifier, context);
}

export async function load(url, context, next) {
  if (!HTTP.test(url)) return next(url, context);
  const res = await fetch(url);
  if (!res.ok) throw new Error(`GET ${url}: HTTP ${res.status}`);
  return { format: "module", source: await res.text(), shortCircuit: true };
}
