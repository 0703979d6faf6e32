import CatenaCore

/// Which records count as recent for exactly-once retries: those whose head timestamp is less
/// than `width` nanoseconds older than `anchor`, the head timestamp of the log's last record.
///
/// Anchored at a record rather than at a clock, so every replica holding the same log draws
/// the same line (compaction keeps the same records everywhere, and a full copy keeps what
/// the source kept), and a node that was down for an hour still finds the writes of the last
/// minute before it stopped. The anchor is a real head timestamp, never later than the wall
/// clock of a head with a sane clock, so the window never ends earlier than a window
/// measured from "now" would. Head clocks are assumed roughly synchronized (DESIGN's bounded
/// drift): a head whose clock ran behind the others' shortens the window by that much.
struct RequestWindow: Hashable, Sendable {
    /// The head timestamp of the log's last record, ns since 1970 (0 for an empty log).
    let anchor: UInt64
    /// The window's width in ns; 0: no record is recent.
    let width: UInt64

    /// Whether a record with head timestamp `timestamp` is inside the window. A timestamp
    /// after the anchor (a head whose clock ran ahead) counts as inside.
    func contains(_ timestamp: UInt64) -> Bool {
        width > 0 && (anchor > timestamp ? anchor - timestamp : 0) < width
    }
}

/// A write the log holds whose request id a retry may still carry (see ``Store/recentRequests(window:)``).
public struct RecentRequest: Hashable, Sendable {
    /// The client's request id.
    public var requestID: RequestID
    /// Where the write is in the log.
    public var lsn: LSN
    /// The head's timestamp of the write, ns since 1970.
    public var timestamp: UInt64
    /// The record is a fence: the request was settled as not applied.
    public var fence: Bool

    /// Creates a recent request.
    public init(requestID: RequestID, lsn: LSN, timestamp: UInt64, fence: Bool = false) {
        self.requestID = requestID
        self.lsn = lsn
        self.timestamp = timestamp
        self.fence = fence
    }
}

extension Store {
    /// The request ids of every durable record whose head timestamp lies within `window` of the
    /// log's last record, with their LSNs, in log order — what a node needs after a restart,
    /// a rejoin or a catch-up to answer a retried write with its original LSN instead of
    /// applying it twice. Records without a request id are left out.
    ///
    /// Reads only record headers, whatever the size of the objects in between: the active
    /// segment's entries are in memory, a sealed segment's come from its hint file, and a
    /// sealed segment whose newest record is outside the window is not read at all. Only a
    /// sealed segment whose hint file is missing or stale (after a crash, say: hints are not
    /// fsynced) is scanned. Records damaged on disk whose header survived are included (the
    /// write did happen); records whose header was lost cannot be.
    ///
    /// Compaction keeps every record inside ``StoreConfiguration/requestWindow``, so a `window`
    /// up to that width is complete; a wider one returns what compaction has not dropped yet.
    public func recentRequests(window: Duration) async throws(CatenaError) -> [RecentRequest] {
        let width = window.nanoseconds
        return try await runBlocking(on: readerPool) { [self] () throws(CatenaError) -> [RecentRequest] in
            // A segment replaced by a concurrent compaction loses its hint file; start over
            // from a fresh view of the log (its replacement has the same records).
            for _ in 0..<8 {
                if let found = try collectRecentRequests(width: width) { return found }
            }
            return try collectRecentRequests(width: width, scanReplaced: true)!
        }
    }

    /// The recent requests of one view of the log, or nil if a segment of that view was
    /// replaced meanwhile (unless `scanReplaced`: then it is read through its open handle).
    private func collectRecentRequests(width: UInt64, scanReplaced: Bool = false) throws(CatenaError) -> [RecentRequest]? {
        let (segments, active, window) = state.withLock { s in
            (s.segments, s.activeEntries, s.requestWindow(width: width))
        }
        if case .closed = state.withLock({ $0.lifecycle }) { throw CatenaError(.closed, "store is closed") }
        var out: [RecentRequest] = []
        func take(_ header: RecordHeader) {
            if header.requestID != .none && window.contains(header.timestamp) {
                out.append(RecentRequest(requestID: header.requestID, lsn: header.lsn, timestamp: header.timestamp, fence: header.type == .fence))
            }
        }
        for seg in segments where seg.recordCount > 0 && window.contains(seg.maxTimestamp) {
            if !seg.sealed {
                for e in active where e.location.segment == seg.id { take(e.header) }
                continue
            }
            if let hinted = HintFile.load(fs: fs, dir: dir, segment: seg.id, segmentSize: seg.size) {
                for e in hinted { take(e.header) }
                continue
            }
            let stillThere = state.withLock { s in s.segments.contains { $0.id == seg.id } }
            if !stillThere && !scanReplaced { return nil }
            var scanner = SegmentScanner(file: seg.file, segment: seg.id, from: UInt64(seg.header.size), end: seg.size)
            while let item = try scanner.next() {
                switch item {
                case .record(let r, _): take(r.header)
                case .summary(let e): take(e.header)
                case .damage(let d): if let header = d.header { take(header) }
                }
            }
        }
        return out
    }
}
