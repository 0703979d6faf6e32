/// One key as a replica's scrub found it: the newest version the replica holds of it, whose
/// records were read from disk and checked (every record checksum, then the content checksum).
///
/// What `catena chain verify` compares across the members of a chain: a key's presence, its
/// ``lsn``, ``size`` and ``contentChecksum`` must be the same on every member, and no member's
/// copy may have a ``problem``.
public struct ScrubEntry: Hashable, Sendable {
    /// The key.
    public var key: Key
    /// The LSN of the record that made this version.
    public var lsn: LSN
    /// The object's size in bytes (as the index records it).
    public var size: UInt64
    /// The content checksum stored with the object (XXH3-64, computed by the writer).
    public var contentChecksum: UInt64
    /// Why this replica cannot serve the version — a record failed its checksum, the bytes read
    /// do not match the content checksum, a chunk is missing, damage found at start-up may have
    /// replaced it — or nil: every byte was read and matched.
    public var problem: String?

    /// Creates an entry.
    public init(key: Key, lsn: LSN, size: UInt64, contentChecksum: UInt64, problem: String? = nil) {
        self.key = key
        self.lsn = lsn
        self.size = size
        self.contentChecksum = contentChecksum
        self.problem = problem
    }
}

/// One page of a replica's scrub: its live keys in byte order, each read and checked.
public struct ScrubPage: Hashable, Sendable {
    /// The keys, in byte order.
    public var entries: [ScrubEntry]
    /// Pass as `after` to get the next page; nil when this was the last page.
    public var nextCursor: Key?
    /// The bytes of object data read from disk for this page.
    public var bytesRead: UInt64
    /// Damage the replica knows of in its log as a whole (found at start-up or since), each
    /// described for humans; carried by the first page of a scrub (the one asked for with no
    /// cursor), empty in the others. Damage whose records' keys are unknown can hide keys from
    /// the entries, so it is reported apart from them.
    public var damage: [String]

    /// Creates a page.
    public init(entries: [ScrubEntry], nextCursor: Key?, bytesRead: UInt64 = 0, damage: [String] = []) {
        self.entries = entries
        self.nextCursor = nextCursor
        self.bytesRead = bytesRead
        self.damage = damage
    }
}
