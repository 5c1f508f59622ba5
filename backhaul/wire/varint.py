"""Protobuf's base-128 varint, for the formats written by hand (the alert message, benchmark bodies)."""


def varint(n: int) -> bytes:
    """``n`` as a varint; a negative number is encoded as its 64-bit two's complement (10 bytes)."""
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
