import CatenaCore
import CoreMetrics

/// When an append counts as durable.
public enum Durability: String, Sendable, CaseIterable {
    /// Group commit (default): concurrent appends share one fsync; a batch closes after
    /// ``StoreConfiguration/groupCommitDelay`` or at ``StoreConfiguration/groupCommitMaxBytes``.
    case batch
    /// One fsync per append call.
    case always
    /// No fsync at all. For tests only: a power cut loses acknowledged appends.
    case none
}

/// How a ``Store`` is set up. Every field has a documented default.
public struct StoreConfiguration: Sendable {
    /// The data directory; created if missing.
    public var directory: String
    /// The cluster this node belongs to; written to `IDENTITY` on first open, checked after.
    public var clusterID: String
    /// This node's id; written to `IDENTITY` on first open, checked after.
    public var nodeID: String
    /// When appends return. Default ``Durability/batch``.
    public var durability: Durability = .batch
    /// A segment is sealed once it reaches this size. Default 64 MiB.
    public var segmentSize: Int = 64 << 20
    /// The largest value one record may hold; larger objects are chunked. Default 16 MiB.
    public var maxValueSize: Int = 16 << 20
    /// How long the group-commit writer waits for more appends before writing a batch that is
    /// smaller than ``groupCommitMaxBytes`` and holds at least ``groupCommitDelayMinAppends``
    /// and fewer than ``groupCommitDelayMaxAppends`` appends. Default 0: appends that arrive
    /// while the previous batch is being synced form the next batch. A short wait (a few hundred
    /// microseconds) makes batches larger under a steady stream of small appends — fewer fsyncs,
    /// and fewer thread hand-overs, per append — at the cost of that much latency per batch; a
    /// node sets it (`catena node --group-commit-delay-us`).
    public var groupCommitDelay: Duration = .zero
    /// The fewest appends a batch must already hold for the writer to wait
    /// ``groupCommitDelay`` for more: a lone append (no concurrency to gather) is written at once.
    /// Default 2.
    public var groupCommitDelayMinAppends: Int = 2
    /// The most appends a batch may already hold for the writer to wait ``groupCommitDelay``:
    /// one that gathered this many while the previous batch was synced shares its sync widely
    /// enough, and is written at once. Default 8.
    public var groupCommitDelayMaxAppends: Int = 8
    /// The most bytes one group commit writes before it syncs. Default 16 MiB.
    public var groupCommitMaxBytes: Int = 16 << 20
    /// How far the writer zero-fills the active segment ahead of its records, when a batch is
    /// smaller than a quarter of this. Records synced over blocks that are already allocated,
    /// written and inside the file's length need no metadata write, so `fdatasync` writes only
    /// the data: on ext4 that took half the CPU and half the wall time of a sync that extends
    /// the file. The batch that passes the end of the zeros writes the next stretch with it, so
    /// one sync in this many bytes of log costs more: 256 KiB kept p99 where it was, 1 MiB and
    /// 4 MiB raised it (docs/PERFORMANCE.md). Small records reach the disk twice (zeros, then
    /// the record); large batches extend the file as before. A sealed segment, and the active
    /// one at ``Store/close()``, is cut back to its records; start-up drops an all-zero end of
    /// the last segment. Default 256 KiB; 0 turns it off.
    public var zeroFillAhead: Int = 256 << 10
    /// Where the store records its fsyncs and group commits (swift-metrics; a node passes its
    /// registry's factory). Default: nowhere.
    public var metrics: any MetricsFactory = NOOPMetricsHandler.instance
    /// Threads that perform blocking reads. Default 4.
    public var readThreads: Int = 4
    /// How long uploads may stay unfinished. A multipart upload this old (from its creation, by
    /// head timestamps) takes no more parts and no completion (``CatenaError/Code/noSuchUpload``;
    /// it may still be aborted) and compaction collects it, once the log holds a record stamped
    /// ``uploadClockSkewAllowance`` later still; chunks of a streamed put that got no manifest
    /// for this long (by their timestamps, against this node's clock) are collected too. Default 7 days (S3's usual lifecycle rule). Every member
    /// of a chain must have the same value: a part is accepted or refused by it.
    public var abandonedUploadTimeout: Duration = .seconds(7 * 24 * 3600)
    /// How much later than ``abandonedUploadTimeout`` compaction collects an expired multipart
    /// upload (by the head timestamps in the log), so that a head whose clock is behind by up to
    /// this much never takes a part for an upload a member has already collected. Default 5
    /// minutes.
    public var uploadClockSkewAllowance: Duration = .seconds(300)
    /// The most index entries (keys, live or deleted) one step of a listing walks while it holds
    /// the store's lock; between steps appends go on. Default 1,024 (well under a millisecond).
    public var listStepEntries: Int = 1024
    /// How long a write's request id stays recognisable for exactly-once retries, by head
    /// timestamps: compaction keeps every record whose timestamp is less than this much older
    /// than the log's last record's, and ``Store/recentRequests(window:)`` finds them all.
    /// Default 60 s: four times the client's 15 s request timeout (a retry comes within it),
    /// with room for clock skew between successive heads. Zero: no window (compaction drops
    /// whatever the watermark allows).
    public var requestWindow: Duration = .seconds(60)
    /// The file system. Default ``PosixFileSystem``.
    public var fileSystem: any FileSystem = PosixFileSystem()
    /// Wall-clock time in nanoseconds since 1970, for upload garbage collection.
    public var now: @Sendable () -> UInt64 = { wallClockNanoseconds() }

    /// Creates a configuration with the defaults above.
    public init(directory: String, clusterID: String, nodeID: String) {
        self.directory = directory
        self.clusterID = clusterID
        self.nodeID = nodeID
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The wall clock in nanoseconds since 1970.
public func wallClockNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

extension Duration {
    var nanoseconds: UInt64 {
        let (s, a) = components
        return UInt64(max(0, s)) * 1_000_000_000 + UInt64(max(0, a) / 1_000_000_000)
    }
}
