// route: a weir transform written in JavaScript (ComponentizeJS).
//
// Splits the changes of one table into one table per value of a column: with
// `{ table = "public.orders", column = "region" }`, an order with region "eu" goes to
// `public.orders_eu`, one with region "us" to `public.orders_us`. Changes without a value
// (and other tables) stay where they are. Deletes route by their old row, so give the
// table REPLICA IDENTITY FULL (otherwise a delete carries only the key and stays).
//
//     [[transform]]
//     plugin = "examples/plugins/route-js"
//     config = { table = "public.orders", column = "region" }

let settings = null;

export const transform = {
  init(config) {
    let parsed;
    try {
      parsed = JSON.parse(config);
    } catch (e) {
      throw { tag: "bad-config", val: `config is not JSON: ${e}` };
    }
    const { table, column } = parsed;
    if (typeof table !== "string" || !table.includes(".")) {
      throw { tag: "bad-config", val: "`table` must be schema.table" };
    }
    if (typeof column !== "string" || column === "") {
      throw { tag: "bad-config", val: "`column` must be a column name" };
    }
    settings = { table, column };
  },

  process(input) {
    let batch;
    try {
      batch = unpack(input);
    } catch (e) {
      throw { tag: "fatal", val: `malformed batch: ${e}` };
    }
    const relations = [...batch.relations];
    const routed = new Map(); // "rel/value" -> index of the routed relation
    const columnOf = batch.relations.map((rel) =>
      `${rel.schema}.${rel.table}` === settings.table
        ? rel.columns.findIndex((c) => c.name === settings.column)
        : -1,
    );
    for (const event of batch.events) {
      const i = columnOf[event.rel];
      if (i < 0) continue;
      const row = event.after ?? event.before;
      const cell = row ? row[i] : null;
      const value = cell instanceof Float ? cell.value : cell;
      if (value === null || value === undefined) continue;
      const suffix = String(value).toLowerCase().replace(/[^a-z0-9_]+/g, "_");
      const key = `${event.rel}/${suffix}`;
      if (!routed.has(key)) {
        const rel = batch.relations[event.rel];
        const table = `${rel.table}_${suffix}`;
        // A relation id of its own: sinks keep one file per relation.
        relations.push({ ...rel, id: routedId(`${rel.schema}.${table}`), table });
        routed.set(key, relations.length - 1);
      }
      event.rel = routed.get(key);
    }
    batch.relations = relations;
    return pack(batch);
  },
};

// A float as it arrived: JavaScript has one number type, and a whole float (10.0) must go
// back out as a float, not an integer.
class Float {
  constructor(value) {
    this.value = value;
  }
}

// FNV-1a of the name, with the high bit set: a stable id per routed table. (A cluster
// whose OIDs have wrapped past 2^31 could in principle collide with one.)
function routedId(name) {
  let h = 0x811c9dc5;
  for (const c of new TextEncoder().encode(name)) {
    h = Math.imul(h ^ c, 0x01000193) >>> 0;
  }
  return (h | 0x80000000) >>> 0;
}

// A small MessagePack codec: the subset weir's batch layout uses.
function unpack(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const text = new TextDecoder();
  let i = 0;
  const int = (n) => (n <= Number.MAX_SAFE_INTEGER && n >= Number.MIN_SAFE_INTEGER ? Number(n) : n);
  const str = (n) => {
    const s = text.decode(bytes.subarray(i, i + n));
    i += n;
    return s;
  };
  const bin = (n) => {
    const b = bytes.slice(i, i + n);
    i += n;
    return b;
  };
  const arr = (n) => {
    const out = new Array(n);
    for (let k = 0; k < n; k++) out[k] = next();
    return out;
  };
  const map = (n) => {
    const out = {};
    for (let k = 0; k < n; k++) {
      const key = next();
      out[key] = next();
    }
    return out;
  };
  function next() {
    const t = bytes[i++];
    if (t <= 0x7f) return t;
    if (t >= 0xe0) return t - 0x100;
    if (t >= 0x80 && t <= 0x8f) return map(t & 0x0f);
    if (t >= 0x90 && t <= 0x9f) return arr(t & 0x0f);
    if (t >= 0xa0 && t <= 0xbf) return str(t & 0x1f);
    let v;
    switch (t) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: v = view.getUint8(i); i += 1; return bin(v);
      case 0xc5: v = view.getUint16(i); i += 2; return bin(v);
      case 0xc6: v = view.getUint32(i); i += 4; return bin(v);
      case 0xca: v = view.getFloat32(i); i += 4; return new Float(v);
      case 0xcb: v = view.getFloat64(i); i += 8; return new Float(v);
      case 0xcc: v = view.getUint8(i); i += 1; return v;
      case 0xcd: v = view.getUint16(i); i += 2; return v;
      case 0xce: v = view.getUint32(i); i += 4; return v;
      case 0xcf: v = view.getBigUint64(i); i += 8; return int(v);
      case 0xd0: v = view.getInt8(i); i += 1; return v;
      case 0xd1: v = view.getInt16(i); i += 2; return v;
      case 0xd2: v = view.getInt32(i); i += 4; return v;
      case 0xd3: v = view.getBigInt64(i); i += 8; return int(v);
      case 0xd9: v = view.getUint8(i); i += 1; return str(v);
      case 0xda: v = view.getUint16(i); i += 2; return str(v);
      case 0xdb: v = view.getUint32(i); i += 4; return str(v);
      case 0xdc: v = view.getUint16(i); i += 2; return arr(v);
      case 0xdd: v = view.getUint32(i); i += 4; return arr(v);
      case 0xde: v = view.getUint16(i); i += 2; return map(v);
      case 0xdf: v = view.getUint32(i); i += 4; return map(v);
    }
    throw new Error(`MessagePack type 0x${t.toString(16)} is not part of weir's batch layout`);
  }
  const value = next();
  if (i !== bytes.length) throw new Error("bytes after the MessagePack value");
  return value;
}

function pack(value) {
  let buf = new Uint8Array(1024);
  let view = new DataView(buf.buffer);
  let n = 0;
  const text = new TextEncoder();
  const room = (k) => {
    if (n + k <= buf.length) return;
    const bigger = new Uint8Array(Math.max(buf.length * 2, n + k));
    bigger.set(buf);
    buf = bigger;
    view = new DataView(buf.buffer);
  };
  const byte = (b) => { room(1); buf[n++] = b; };
  const u32 = (v) => { room(4); view.setUint32(n, v); n += 4; };
  function put(v) {
    if (v === null || v === undefined) return byte(0xc0);
    if (v === true) return byte(0xc3);
    if (v === false) return byte(0xc2);
    if (typeof v === "bigint") {
      room(9);
      if (v >= 0n) { buf[n++] = 0xcf; view.setBigUint64(n, v); } else { buf[n++] = 0xd3; view.setBigInt64(n, v); }
      n += 8;
      return;
    }
    if (typeof v === "number") {
      if (Number.isInteger(v) && Number.isSafeInteger(v)) {
        if (v >= 0 && v <= 0x7f) return byte(v);
        if (v < 0 && v >= -32) return byte(v + 0x100);
        room(9);
        if (v >= 0) { buf[n++] = 0xcf; view.setBigUint64(n, BigInt(v)); } else { buf[n++] = 0xd3; view.setBigInt64(n, BigInt(v)); }
        n += 8;
        return;
      }
      room(9);
      buf[n++] = 0xcb;
      view.setFloat64(n, v);
      n += 8;
      return;
    }
    if (typeof v === "string") {
      const data = text.encode(v);
      if (data.length <= 31) byte(0xa0 | data.length);
      else { byte(0xdb); u32(data.length); }
      room(data.length);
      buf.set(data, n);
      n += data.length;
      return;
    }
    if (v instanceof Float) {
      room(9);
      buf[n++] = 0xcb;
      view.setFloat64(n, v.value);
      n += 8;
      return;
    }
    if (v instanceof Uint8Array) {
      byte(0xc6);
      u32(v.length);
      room(v.length);
      buf.set(v, n);
      n += v.length;
      return;
    }
    if (Array.isArray(v)) {
      if (v.length <= 15) byte(0x90 | v.length);
      else { byte(0xdd); u32(v.length); }
      for (const x of v) put(x);
      return;
    }
    const keys = Object.keys(v);
    if (keys.length <= 15) byte(0x80 | keys.length);
    else { byte(0xdf); u32(keys.length); }
    for (const k of keys) { put(k); put(v[k]); }
  }
  put(value);
  return buf.slice(0, n);
}
