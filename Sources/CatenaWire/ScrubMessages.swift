import CatenaCore
import NIOCore

// The payloads of the scrub (`catena chain verify`): a page of one replica's keys, each read
// from disk and checked. Every member answers for its own store, not only the tail.

extension FrameType {
    /// Operator → any member: one page of the node's scrub (``ScrubRequest``). Reply:
    /// ``scrubPage`` (``ScrubPagePayload``), or an error frame.
    public static let scrub = FrameType(rawValue: 32)
    /// A page of a node's scrub.
    public static let scrubPage = FrameType(rawValue: 33)
}

/// The payload of a ``FrameType/scrub`` frame: which keys of the node's store to read back and
/// check, and how much work one page may be.
///
/// Layout: prefix (u16 length + bytes), after (u8 present + key), limit (u32), most bytes of
/// object data to read (u64). A node bounds both by its own limits.
public struct ScrubRequest: Hashable, Sendable {
    /// Only keys starting with these bytes.
    public var prefix: [UInt8]
    /// Only keys after this one (the previous page's cursor).
    public var after: Key?
    /// At most this many keys.
    public var limit: Int
    /// At most about this many bytes of object data read (a page holds at least one key).
    public var maxBytes: UInt64

    /// Creates a scrub request.
    public init(prefix: [UInt8] = [], after: Key? = nil, limit: Int = 256, maxBytes: UInt64 = 16 << 20) {
        self.prefix = prefix
        self.after = after
        self.limit = limit
        self.maxBytes = maxBytes
    }

    /// The payload bytes.
    public func encoded() -> ByteBuffer {
        var b = ByteBuffer()
        b.writeInteger(UInt16(clamping: prefix.count), endianness: .little)
        b.writeBytes(prefix.prefix(Int(UInt16.max)))
        b.writeOptionalKey(after)
        b.writeInteger(UInt32(clamping: limit), endianness: .little)
        b.writeInteger(maxBytes, endianness: .little)
        return b
    }

    /// Parses a scrub payload.
    public init(decoding payload: ByteBuffer) throws(CatenaError) {
        var b = payload
        guard let n = b.readInteger(endianness: .little, as: UInt16.self), let prefix = b.readBytes(length: Int(n)),
              let hasAfter = b.readInteger(as: UInt8.self) else {
            throw CatenaError(.malformed, "scrub request is truncated")
        }
        let after = hasAfter == 0 ? nil : try b.readKey()
        guard let limit = b.readInteger(endianness: .little, as: UInt32.self),
              let maxBytes = b.readInteger(endianness: .little, as: UInt64.self) else {
            throw CatenaError(.malformed, "scrub request is truncated")
        }
        self.init(prefix: prefix, after: after, limit: Int(limit), maxBytes: maxBytes)
    }
}

/// The payload of a ``FrameType/scrubPage`` frame.
///
/// Layout: count (u32), then each entry: key (u16 length + bytes), LSN (2 × u64), size (u64),
/// content checksum (u64), problem (u8: 0 none, 1 present, then u16 length + UTF-8); the next
/// cursor (u8 present + key); bytes read (u64); damage (u16 count, then u16 length + UTF-8
/// each). Problems and damage descriptions longer than ``maximumTextBytes`` are cut.
public enum ScrubPagePayload {
    /// The longest problem or damage description sent, in UTF-8 bytes.
    public static let maximumTextBytes = 4096
    /// The least bytes one entry takes (a 1-byte key, no problem).
    static let minimumEntrySize = 3 + 16 + 8 + 8 + 1

    /// The payload bytes for `page`.
    public static func encode(_ page: ScrubPage) -> ByteBuffer {
        var b = ByteBuffer()
        b.writeInteger(UInt32(page.entries.count), endianness: .little)
        for e in page.entries { write(e, into: &b) }
        b.writeOptionalKey(page.nextCursor)
        b.writeInteger(page.bytesRead, endianness: .little)
        let damage = page.damage.prefix(Int(UInt16.max))
        b.writeInteger(UInt16(damage.count), endianness: .little)
        for d in damage { b.writeShortString(String(d.utf8Prefix(maximumTextBytes))) }
        return b
    }

    /// Parses a scrub page payload.
    public static func decode(_ payload: ByteBuffer) throws(CatenaError) -> ScrubPage {
        var b = payload
        guard let count = b.readInteger(endianness: .little, as: UInt32.self) else {
            throw CatenaError(.malformed, "scrub page is truncated")
        }
        // A count beyond what the bytes can hold is a lie, not an allocation.
        guard Int(count) <= b.readableBytes / minimumEntrySize else {
            throw CatenaError(.malformed, "scrub page claims \(count) entries in \(b.readableBytes) bytes")
        }
        var entries: [ScrubEntry] = []
        entries.reserveCapacity(Int(count))
        for _ in 0..<count { entries.append(try read(&b)) }
        guard let hasNext = b.readInteger(as: UInt8.self) else { throw CatenaError(.malformed, "scrub page is truncated") }
        let next = hasNext == 0 ? nil : try b.readKey()
        guard let bytesRead = b.readInteger(endianness: .little, as: UInt64.self),
              let damageCount = b.readInteger(endianness: .little, as: UInt16.self) else {
            throw CatenaError(.malformed, "scrub page is truncated")
        }
        var damage: [String] = []
        for _ in 0..<damageCount { damage.append(try b.readShortString(what: "scrub page damage")) }
        return ScrubPage(entries: entries, nextCursor: next, bytesRead: bytesRead, damage: damage)
    }

    /// `page` cut so that its payload stays within `maxBytes` (at least one entry is kept); a
    /// cut page's cursor points after its last entry.
    public static func bounded(_ page: ScrubPage, maxBytes: Int) -> ScrubPage {
        var size = 4 + 1 + 2 + Key.maxLength + 8 + 2
        for d in page.damage { size += 2 + min(d.utf8.count, maximumTextBytes) }
        var scratch = ByteBuffer()
        for (i, e) in page.entries.enumerated() {
            scratch.clear()
            write(e, into: &scratch)
            size += scratch.readableBytes
            if size > maxBytes && i > 0 {
                let kept = Array(page.entries[..<i])
                return ScrubPage(entries: kept, nextCursor: kept.last?.key, bytesRead: page.bytesRead, damage: page.damage)
            }
        }
        return page
    }

    static func write(_ e: ScrubEntry, into b: inout ByteBuffer) {
        b.writeKey(e.key)
        b.writeLSN(e.lsn)
        b.writeInteger(e.size, endianness: .little)
        b.writeInteger(e.contentChecksum, endianness: .little)
        if let problem = e.problem {
            b.writeInteger(UInt8(1))
            b.writeShortString(String(problem.utf8Prefix(maximumTextBytes)))
        } else {
            b.writeInteger(UInt8(0))
        }
    }

    static func read(_ b: inout ByteBuffer) throws(CatenaError) -> ScrubEntry {
        let key = try b.readKey()
        let lsn = try b.readLSN()
        guard let size = b.readInteger(endianness: .little, as: UInt64.self),
              let checksum = b.readInteger(endianness: .little, as: UInt64.self),
              let hasProblem = b.readInteger(as: UInt8.self) else {
            throw CatenaError(.malformed, "scrub entry is truncated")
        }
        var problem: String?
        switch hasProblem {
        case 0: break
        case 1: problem = try b.readShortString(what: "scrub entry problem")
        default: throw CatenaError(.malformed, "scrub entry's problem flag is \(hasProblem), not 0 or 1")
        }
        return ScrubEntry(key: key, lsn: lsn, size: size, contentChecksum: checksum, problem: problem)
    }
}
