#!/usr/bin/env python3
"""squid NTLM helper for e2e scenario 14 (A1): issues a challenge with target
info and verifies the client's NTLMv2 response (MS-NLMP 3.3.2) against one
user and password, so a wrong password is refused. squid's own
ntlm_fake_auth accepts any password and sends a malformed challenge.

usage: ntlmv2_auth.py DOMAIN USER PASSWORD
protocol: squid sends `YR <type1>` / `KK <type3>`; we answer `TT <type2>`,
`AF <user>` (accepted) or `NA <reason>` (refused).
"""
import base64, hmac, os, struct, sys

def md4(data):
    # RFC 1320; hashlib's md4 is gone with OpenSSL 3's default provider.
    f = lambda x, y, z: (x & y) | (~x & z)
    g = lambda x, y, z: (x & y) | (x & z) | (y & z)
    h = lambda x, y, z: x ^ y ^ z
    rol = lambda v, s: ((v << s) | (v >> (32 - s))) & 0xFFFFFFFF
    msg = data + b"\x80" + b"\0" * ((55 - len(data)) % 64) + struct.pack("<Q", len(data) * 8)
    a, b, c, d = 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476
    for at in range(0, len(msg), 64):
        x = struct.unpack("<16I", msg[at:at + 64])
        aa, bb, cc, dd = a, b, c, d
        for i in range(16):
            k, s = i, (3, 7, 11, 19)[i % 4]
            if i % 4 == 0: a = rol((a + f(b, c, d) + x[k]) & 0xFFFFFFFF, s)
            elif i % 4 == 1: d = rol((d + f(a, b, c) + x[k]) & 0xFFFFFFFF, s)
            elif i % 4 == 2: c = rol((c + f(d, a, b) + x[k]) & 0xFFFFFFFF, s)
            else: b = rol((b + f(c, d, a) + x[k]) & 0xFFFFFFFF, s)
        for i in range(16):
            k, s = (i % 4) * 4 + i // 4, (3, 5, 9, 13)[i % 4]
            t = 0x5A827999
            if i % 4 == 0: a = rol((a + g(b, c, d) + x[k] + t) & 0xFFFFFFFF, s)
            elif i % 4 == 1: d = rol((d + g(a, b, c) + x[k] + t) & 0xFFFFFFFF, s)
            elif i % 4 == 2: c = rol((c + g(d, a, b) + x[k] + t) & 0xFFFFFFFF, s)
            else: b = rol((b + g(c, d, a) + x[k] + t) & 0xFFFFFFFF, s)
        for i in range(16):
            k, s = (0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15)[i], (3, 9, 11, 15)[i % 4]
            t = 0x6ED9EBA1
            if i % 4 == 0: a = rol((a + h(b, c, d) + x[k] + t) & 0xFFFFFFFF, s)
            elif i % 4 == 1: d = rol((d + h(a, b, c) + x[k] + t) & 0xFFFFFFFF, s)
            elif i % 4 == 2: c = rol((c + h(d, a, b) + x[k] + t) & 0xFFFFFFFF, s)
            else: b = rol((b + h(c, d, a) + x[k] + t) & 0xFFFFFFFF, s)
        a, b, c, d = [(v + w) & 0xFFFFFFFF for v, w in zip((a, b, c, d), (aa, bb, cc, dd))]
    return struct.pack("<4I", a, b, c, d)

assert md4(b"abc").hex() == "a448017aaf21d8525fc10ae87aa6729d"

def u16(s):
    return s.encode("utf-16-le")

def challenge_message(domain, nonce):
    name = u16(domain)
    info = b""
    for kind, value in ((2, u16(domain)), (1, u16("PROXY")), (4, u16(domain.lower() + ".test")),
                        (3, u16("proxy." + domain.lower() + ".test")), (7, struct.pack("<Q", 133000000000000000))):
        info += struct.pack("<HH", kind, len(value)) + value
    info += b"\0\0\0\0"
    flags = 0x00000001 | 0x00000004 | 0x00000200 | 0x00008000 | 0x00010000 | 0x00080000 | 0x00800000 | 0x02000000 | 0x20000000 | 0x80000000
    head = b"NTLMSSP\0" + struct.pack("<I", 2)
    head += struct.pack("<HHI", len(name), len(name), 56) + struct.pack("<I", flags) + nonce + b"\0" * 8
    head += struct.pack("<HHI", len(info), len(info), 56 + len(name)) + bytes([10, 0, 0x61, 0x4A, 0, 0, 0, 15])
    return head + name + info

def field(msg, at):
    length, _, offset = struct.unpack("<HHI", msg[at:at + 8])
    if offset + length > len(msg):
        raise ValueError("a field past the end")
    return msg[offset:offset + length]

def verify(msg, nonce, domain, user, password):
    if not msg.startswith(b"NTLMSSP\0") or struct.unpack("<I", msg[8:12])[0] != 3:
        return "not an AUTHENTICATE message"
    nt, dom, name = field(msg, 20), field(msg, 28), field(msg, 36)
    if len(nt) <= 24:
        return "not an NTLMv2 response"
    if name.decode("utf-16-le").lower() != user.lower() or dom.decode("utf-16-le").upper() != domain.upper():
        return "unknown user"
    ntowf = hmac.new(md4(u16(password)), u16(user.upper() + dom.decode("utf-16-le")), "md5").digest()
    proof, blob = nt[:16], nt[16:]
    if not hmac.compare_digest(hmac.new(ntowf, nonce + blob, "md5").digest(), proof):
        return "wrong password"
    return None

def main():
    domain, user, password = sys.argv[1:4]
    nonce = None
    for line in sys.stdin:
        parts = line.strip().split(" ", 1)
        try:
            token = base64.b64decode(parts[1]) if len(parts) > 1 else b""
            if parts[0] == "YR":
                nonce = os.urandom(8)
                reply = "TT " + base64.b64encode(challenge_message(domain, nonce)).decode()
            elif parts[0] == "KK" and nonce is not None:
                why = verify(token, nonce, domain, user, password)
                reply = "AF " + user if why is None else "NA " + why
                nonce = None
            else:
                reply = "BH unexpected " + parts[0]
        except Exception as e:  # a malformed message is a refusal, not a crash
            reply = "NA malformed: %s" % e
        sys.stdout.write(reply + "\n")
        sys.stdout.flush()

if __name__ == "__main__":
    main()
