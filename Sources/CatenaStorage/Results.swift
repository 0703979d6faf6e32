import CatenaCore

/// A segment of the log.
public struct SegmentInfo: Hashable, Sendable {
    /// The segment's id (its file name).
    public var id: UInt64
    /// The LSN the segment starts at (its first record's, for compacted segments).
    public var firstLSN: LSN
    /// Its last record's LSN.
    public var lastLSN: LSN
    /// Records in it.
    public var recordCount: Int
    /// Its size in bytes.
    public var byteSize: UInt64
    /// Whether it is sealed (never appended to again).
    public var sealed: Bool
}

/// Damaged bytes the store found and refuses to serve.
public struct DamageReport: Hashable, Sendable, CustomStringConvertible {
    /// The damaged file.
    public var path: String
    /// Where the damage starts.
    public var offset: UInt64
    /// How many bytes are damaged.
    public var length: UInt64
    /// The LSN of the damaged record, when its header survived.
    public var lsn: LSN?
    /// The key of the damaged record, when its header survived.
    public var key: Key?
    /// When the header was lost too: the seqs the damaged bytes may have held. Reads of keys
    /// whose newest version is older than these, and listings, are refused until a re-copy.
    public var lostSeqs: ClosedRange<UInt64>?

    public var description: String {
        "\(path) offset \(offset), \(length) bytes" + (lsn.map { ", record \($0)" } ?? "") + (key.map { ", key \($0)" } ?? "")
            + (lostSeqs.map { ", may have held seqs \($0.lowerBound)...\($0.upperBound)" } ?? "")
    }
}

/// Counters of a store since it was opened. Checked in tests; shown by `catena bench-storage`.
public struct StoreMetrics: Hashable, Sendable {
    /// Records made durable by appends.
    public var appendedRecords: Int = 0
    /// Bytes of those records.
    public var appendedBytes: Int = 0
    /// Append calls acknowledged.
    public var appendCalls: Int = 0
    /// Group commits (write + sync rounds).
    public var batches: Int = 0
    /// fsyncs of segment files and directories.
    public var syncs: Int = 0
    /// Segments sealed.
    public var segmentsSealed: Int = 0
    /// Compaction rounds that replaced segments.
    public var compactions: Int = 0
    /// Records compactions dropped.
    public var compactionRecordsDropped: Int = 0
    /// Bytes of segments compactions gave back (before minus after).
    public var compactionBytesReclaimed: Int = 0
    /// Bytes of torn tail dropped at open.
    public var tornBytesDropped: Int = 0
}

/// What one ``Store/compact()`` did.
public struct CompactionReport: Hashable, Sendable {
    /// Segments replaced.
    public var segmentsRewritten: Int = 0
    /// Records dropped (overwritten, dropped tombstones, abandoned chunks).
    public var recordsDropped: Int = 0
    /// Bytes before and after, over the rewritten segments.
    public var bytesBefore: UInt64 = 0
    public var bytesAfter: UInt64 = 0
}

/// How much of the log compaction could give back, from the store's running estimate (no I/O).
/// See ``Store/garbage``.
public struct GarbageReport: Hashable, Sendable {
    /// Bytes of the sealed segments.
    public var sealedBytes: UInt64 = 0
    /// Bytes of superseded versions and tombstones in sealed segments, whether or not
    /// compaction may drop them yet.
    public var garbageBytes: UInt64 = 0
    /// The part of ``garbageBytes`` in segments compaction may rewrite now and whose records
    /// it may drop: sealed, not the log's last, every record at or below the commit watermark
    /// and outside the request-id window.
    public var collectableBytes: UInt64 = 0

    /// Creates a report.
    public init(sealedBytes: UInt64 = 0, garbageBytes: UInt64 = 0, collectableBytes: UInt64 = 0) {
        self.sealedBytes = sealedBytes
        self.garbageBytes = garbageBytes
        self.collectableBytes = collectableBytes
    }

    /// ``collectableBytes`` over ``sealedBytes`` (0 without sealed segments): the share of the
    /// sealed log that a compaction now would give back, about.
    public var collectableRatio: Double {
        sealedBytes == 0 ? 0 : Double(collectableBytes) / Double(sealedBytes)
    }
}

/// One version of a key as ``Store/read(_:range:at:)`` found it: which version it is, even when
/// that version is a delete, and the object if it is not.
public struct VersionedRead: Sendable {
    /// The version's LSN; nil if the store holds no version of the key at all (never written,
    /// or deleted and the tombstone compacted away).
    public var lsn: LSN?
    /// The object at that version; nil if the key has no version here or the version is a
    /// delete (then ``lsn`` is the tombstone's).
    public var object: StoredObject?

    /// Creates a read result.
    public init(lsn: LSN?, object: StoredObject?) {
        self.lsn = lsn
        self.object = object
    }
}

/// One version of a key's metadata as ``Store/readInfo(_:at:)`` found it: ``VersionedRead``
/// without the body.
public struct VersionedInfo: Hashable, Sendable {
    /// The version's LSN; nil if the store holds no version of the key at all.
    public var lsn: LSN?
    /// The object's metadata at that version; nil if the key has no version here or the version
    /// is a delete (then ``lsn`` is the tombstone's).
    public var info: ObjectInfo?

    /// Creates a metadata read result.
    public init(lsn: LSN?, info: ObjectInfo?) {
        self.lsn = lsn
        self.info = info
    }
}
