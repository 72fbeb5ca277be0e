"""A small MessagePack codec: the subset weir's batch layout uses (nil, bool, int,
float, str, bin, array, map). Pure Python, so it runs inside the component."""
import struct


def unpackb(data):
    value, end = _decode(memoryview(data), 0)
    if end != len(data):
        raise ValueError(f"{len(data) - end} bytes after the MessagePack value")
    return value


def _decode(b, i):
    t = b[i]
    i += 1
    if t <= 0x7F:
        return t, i
    if t >= 0xE0:
        return t - 0x100, i
    if 0x80 <= t <= 0x8F:
        return _map(b, i, t & 0x0F)
    if 0x90 <= t <= 0x9F:
        return _array(b, i, t & 0x0F)
    if 0xA0 <= t <= 0xBF:
        n = t & 0x1F
        return str(b[i:i + n], "utf-8"), i + n
    if t == 0xC0:
        return None, i
    if t == 0xC2:
        return False, i
    if t == 0xC3:
        return True, i
    if t in (0xC4, 0xC5, 0xC6):
        size = {0xC4: 1, 0xC5: 2, 0xC6: 4}[t]
        n = int.from_bytes(b[i:i + size], "big")
        i += size
        return bytes(b[i:i + n]), i + n
    if t == 0xCA:
        return struct.unpack(">f", b[i:i + 4])[0], i + 4
    if t == 0xCB:
        return struct.unpack(">d", b[i:i + 8])[0], i + 8
    if t in (0xCC, 0xCD, 0xCE, 0xCF):
        size = 1 << (t - 0xCC)
        return int.from_bytes(b[i:i + size], "big"), i + size
    if t in (0xD0, 0xD1, 0xD2, 0xD3):
        size = 1 << (t - 0xD0)
        return int.from_bytes(b[i:i + size], "big", signed=True), i + size
    if t in (0xD9, 0xDA, 0xDB):
        size = {0xD9: 1, 0xDA: 2, 0xDB: 4}[t]
        n = int.from_bytes(b[i:i + size], "big")
        i += size
        return str(b[i:i + n], "utf-8"), i + n
    if t in (0xDC, 0xDD):
        size = 2 if t == 0xDC else 4
        return _array(b, i + size, int.from_bytes(b[i:i + size], "big"))
    if t in (0xDE, 0xDF):
        size = 2 if t == 0xDE else 4
        return _map(b, i + size, int.from_bytes(b[i:i + size], "big"))
    raise ValueError(f"MessagePack type 0x{t:02x} is not part of weir's batch layout")


def _array(b, i, n):
    out = []
    for _ in range(n):
        v, i = _decode(b, i)
        out.append(v)
    return out, i


def _map(b, i, n):
    out = {}
    for _ in range(n):
        k, i = _decode(b, i)
        v, i = _decode(b, i)
        out[k] = v
    return out, i


def packb(value):
    out = bytearray()
    _encode(value, out)
    return bytes(out)


def _encode(v, out):
    if v is None:
        out.append(0xC0)
    elif v is True:
        out.append(0xC3)
    elif v is False:
        out.append(0xC2)
    elif isinstance(v, int):
        if 0 <= v <= 0x7F:
            out.append(v)
        elif -32 <= v < 0:
            out.append(v + 0x100)
        elif v >= 0:
            out.append(0xCF)
            out += v.to_bytes(8, "big")
        else:
            out.append(0xD3)
            out += v.to_bytes(8, "big", signed=True)
    elif isinstance(v, float):
        out.append(0xCB)
        out += struct.pack(">d", v)
    elif isinstance(v, str):
        data = v.encode("utf-8")
        n = len(data)
        if n <= 31:
            out.append(0xA0 | n)
        elif n <= 0xFF:
            out += bytes((0xD9, n))
        elif n <= 0xFFFF:
            out.append(0xDA)
            out += n.to_bytes(2, "big")
        else:
            out.append(0xDB)
            out += n.to_bytes(4, "big")
        out += data
    elif isinstance(v, (bytes, bytearray)):
        out.append(0xC6)
        out += len(v).to_bytes(4, "big")
        out += v
    elif isinstance(v, (list, tuple)):
        n = len(v)
        if n <= 15:
            out.append(0x90 | n)
        else:
            out.append(0xDD)
            out += n.to_bytes(4, "big")
        for x in v:
            _encode(x, out)
    elif isinstance(v, dict):
        n = len(v)
        if n <= 15:
            out.append(0x80 | n)
        else:
            out.append(0xDF)
            out += n.to_bytes(4, "big")
        for k, x in v.items():
            _encode(k, out)
            _encode(x, out)
    else:
        raise TypeError(f"cannot encode {type(v).__name__} as MessagePack")
