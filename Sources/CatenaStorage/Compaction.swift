import CatenaCore
import Synchronization

extension Store {
    /// Rewrites sealed segments without records nobody can need any more, and returns what it did.
    ///
    /// Only records at or below the commit watermark are candidates, so a truncation (which never
    /// goes below the watermark) can never need a dropped record. A record is dropped when a newer
    /// version of its key at or below the watermark exists; a chunk when its upload's manifest was
    /// so superseded, or when its upload got no manifest within
    /// ``StoreConfiguration/abandonedUploadTimeout``; a tombstone only when it is its key's newest
    /// version and every older version is dropped in the same rewrite (the rewrite starts at the
    /// log's first segment). Each group of adjacent segments becomes one new segment, crash-safe:
    /// write the new file, fsync, record the compacted history in STATE, rename it into place,
    /// fsync the directory, then remove the old files oldest first. The new segment's header
    /// names the segments it replaces, so start-up finishes an interrupted compaction.
    /// Appends and reads continue meanwhile.
    ///
    /// Every record inside the request-id window (``StoreConfiguration/requestWindow``, by head
    /// timestamps relative to the log's last record) is kept, so a retry still finds its
    /// original write (``recentRequests(window:)``); a tombstone goes only once its older
    /// versions are outside the window too, and a kept manifest keeps its chunks.
    ///
    /// Cancelling the calling task stops the compaction after the group of segments it is
    /// rewriting (each group is replaced atomically); the report then covers the groups done.
    @discardableResult
    public func compact() async throws(CatenaError) -> CompactionReport {
        let stop = CompactionStop()
        let result = await withTaskCancellationHandler {
            await Result.catching { () async throws(CatenaError) -> CompactionReport in
                try await runBlocking(on: maintenancePool) { [self] () throws(CatenaError) -> CompactionReport in
                    try maintenanceLock.withLock { _ throws(CatenaError) in try performCompaction(stop: stop) }
                }
            }
        } onCancel: {
            stop.request()
        }
        return try result.get()
    }

    /// What compaction could give back now, from a running estimate kept in memory: cheap
    /// enough to ask every second, for a scheduler that compacts by garbage ratio.
    ///
    /// A version counts as garbage once a newer version of its key is durable, a tombstone
    /// from the start; it is *collectable* in a sealed segment other than the log's last whose
    /// records are all at or below the commit watermark and outside the request-id window
    /// (by the segment's newest head timestamp). It overestimates a little (a tombstone whose
    /// older versions survive elsewhere; a version superseded by a record above the watermark)
    /// and does not count chunks of abandoned uploads; ``compact()`` decides exactly.
    public var garbage: GarbageReport {
        state.withLock { s in
            let window = s.requestWindow(width: configuration.requestWindow.nanoseconds)
            var report = GarbageReport()
            for (i, seg) in s.segments.enumerated() where seg.sealed {
                let bytes = min(seg.size, s.index.garbageBytes[seg.id] ?? 0)
                report.sealedBytes += seg.size
                report.garbageBytes += bytes
                if i < s.segments.count - 1 && seg.lastLSN <= s.persistent.commitWatermark && !window.contains(seg.maxTimestamp) {
                    report.collectableBytes += bytes
                }
            }
            return report
        }
    }

    private struct Candidate {
        var segment: SegmentState
        var entries: [EntrySummary]
        var live: [Bool]
        var liveBytes: UInt64
        var hasDead: Bool { live.contains(false) }
    }

    func performCompaction(stop: CompactionStop = CompactionStop()) throws(CatenaError) -> CompactionReport {
        var report = CompactionReport()
        let sealed: [SegmentState] = try state.withLock { (s) throws(CatenaError) -> [SegmentState] in
            if case .closed = s.lifecycle { throw CatenaError(.closed, "store is closed") }
            // Never the log's last segment, even when sealed (after a truncation at a segment
            // boundary, or a restart): it holds the log's end, which must never move back.
            return s.segments.dropLast().filter(\.sealed)
        }
        let now = configuration.now()
        let timeout = configuration.abandonedUploadTimeout.nanoseconds

        // Load every sealed segment's entries (hint, else scan); a damaged segment is left alone.
        var loaded: [(SegmentState, [EntrySummary]?)] = []
        for seg in sealed {
            loaded.append((seg, try entries(of: seg)))
        }

        // What liveness needs: per key, the newest version at or below the watermark (such a
        // version is permanent: truncation never goes below the watermark); per upload, the LSN
        // of its manifest; the uploads still waiting for a manifest.
        // Multipart uploads past their time end here, as if aborted: their parts' chunks become
        // garbage. By the log's time, not this node's clock: only once the log holds a record
        // the head stamped later than the upload's deadline (plus an allowance for a head whose
        // clock runs behind), so a member that lags — down for a while, catching up — never
        // collects an upload whose completion is still on its way to it.
        let allowance = configuration.uploadClockSkewAllowance.nanoseconds
        state.withLock { s in
            guard s.logTime > timeout &+ allowance else { return }
            for id in s.index.expireUploads(createdBefore: s.logTime - timeout - allowance) {
                s.uploadTracker.expire(id)
            }
        }
        let (watermark, activeEntries, pending, open, window) = state.withLock { s in
            (s.persistent.commitWatermark, s.activeEntries, s.index.uploads.mapValues(\.lastTimestamp),
             s.index.multipart.mapValues { upload in (Set(upload.parts.values.map(\.lsn)), Set(upload.parts.values.map(\.part.group))) },
             s.requestWindow(width: configuration.requestWindow.nanoseconds))
        }
        var facts = LivenessFacts(watermark: watermark, now: now, timeout: timeout, window: window, pendingUploads: pending,
                                  openUploads: open)
        facts.incomplete = loaded.contains { $0.1 == nil } || state.withLock { !$0.damage.isEmpty }
        for (_, entries) in loaded { for e in entries ?? [] { facts.learn(e) } }
        for e in activeEntries { facts.learn(e) }

        // Plan groups: runs of adjacent segments with dead records, each within one segment size.
        // Tombstones are judged afterwards, per group.
        var groups: [[Candidate]] = []
        var current: [Candidate] = []
        var currentBytes: UInt64 = 0
        for (seg, entries) in loaded {
            guard let entries else {
                if !current.isEmpty { groups.append(current); current = []; currentBytes = 0 }
                continue
            }
            let live = entries.map { facts.isLive($0, tombstoneDroppable: false) }
            let liveBytes = zip(entries, live).reduce(UInt64(0)) { $0 + ($1.1 ? UInt64($1.0.location.length) : 0) }
            let candidate = Candidate(segment: seg, entries: entries, live: live, liveBytes: liveBytes)
            if !candidate.hasDead && !facts.hasDroppableTombstone(entries) {
                if !current.isEmpty { groups.append(current); current = []; currentBytes = 0 }
                continue
            }
            if !current.isEmpty && currentBytes + candidate.liveBytes > UInt64(configuration.segmentSize) {
                groups.append(current); current = []; currentBytes = 0
            }
            current.append(candidate)
            currentBytes += candidate.liveBytes
        }
        if !current.isEmpty { groups.append(current) }
        // A tombstone may go when every older record of its key lies in the same group, so one
        // atomic rewrite removes them together (nothing older can resurface after a crash).
        groups = groups.map { group in
            let ids = Set(group.map(\.segment.id))
            return group.map { c in
                var c = c
                for (i, e) in c.entries.enumerated() where e.header.type == .delete && c.live[i] {
                    if facts.isLive(e, tombstoneDroppable: facts.olderVersionsLie(of: e, within: ids)) == false {
                        c.live[i] = false
                        c.liveBytes -= UInt64(e.location.length)
                    }
                }
                return c
            }
        }.filter { $0.contains(where: \.hasDead) }

        for group in groups {
            // Between groups: a cancelled caller or a closing store ends the compaction here.
            let closing: Bool = state.withLock { s in
                if case .closed = s.lifecycle { return true }
                return false
            }
            if stop.requested || closing {
                logger.info("compaction stopped early", metadata: .catena([.segmentsRewritten: "\(report.segmentsRewritten)"]))
                break
            }
            if let done = try rewrite(group) {
                report.segmentsRewritten += group.count
                report.recordsDropped += done.dropped
                report.bytesBefore += group.reduce(0) { $0 + $1.segment.size }
                report.bytesAfter += done.bytesAfter
            }
        }
        if report.segmentsRewritten > 0 {
            state.withLock { s in
                s.metrics.compactions += 1
                s.metrics.compactionRecordsDropped += report.recordsDropped
                s.metrics.compactionBytesReclaimed += Int(report.bytesBefore - min(report.bytesBefore, report.bytesAfter))
            }
            logger.info("compacted", metadata: .catena([
                .segmentsRewritten: "\(report.segmentsRewritten)", .recordsDropped: "\(report.recordsDropped)",
                .bytesBefore: "\(report.bytesBefore)", .bytesAfter: "\(report.bytesAfter)",
            ]))
        }
        return report
    }

    /// A sealed segment's entries, or nil if it is damaged (compaction leaves it alone).
    private func entries(of seg: SegmentState) throws(CatenaError) -> [EntrySummary]? {
        if let bytes = try? seg.file.size(), bytes == seg.size,
           let entries = HintFile.load(fs: fs, dir: dir, segment: seg.id, segmentSize: seg.size) {
            return entries
        }
        var scanner = SegmentScanner(file: seg.file, segment: seg.id, from: UInt64(seg.header.size), end: seg.size)
        var out: [EntrySummary] = []
        while let item = try scanner.next() {
            switch item {
            case .record(let r, let loc): out.append(r.summary(at: loc))
            case .summary(let e): out.append(e)
            case .damage: return nil
            }
        }
        return out
    }

    /// Rewrites one group into one new segment (or none, if nothing in it is live).
    private func rewrite(_ group: [Candidate]) throws(CatenaError) -> (dropped: Int, bytesAfter: UInt64)? {
        let kept = group.flatMap { c in zip(c.entries, c.live).filter(\.1).map(\.0) }
        let droppedEntries = group.flatMap { c in zip(c.entries, c.live).filter { !$0.1 }.map(\.0) }
        let maxDropped = droppedEntries.map(\.lsn).max() ?? .zero
        let oldIDs = group.map(\.segment.id)
        let filesByID = Dictionary(uniqueKeysWithValues: group.map { ($0.segment.id, $0.segment.file) })

        var newSegment: SegmentState?
        var newEntries: [EntrySummary] = []
        /// The old location of each of `newEntries`, index for index.
        var oldLocations: [Location] = []
        var tmpPath: String?
        if let first = kept.first {
            let id = state.withLock { s in
                defer { s.nextSegmentID += 1 }
                return s.nextSegmentID
            }
            let header = SegmentHeader(id: id, firstLSN: first.lsn, createdAt: configuration.now(), replaces: oldIDs)
            let tmp = dir.segment(id) + ".tmp"
            tmpPath = tmp
            let out = try fs.open(tmp, mode: .createNew)
            var offset = UInt64(header.size)
            var pending: [[UInt8]] = [header.encoded()]
            var pendingBytes = header.size
            var writeAt: UInt64 = 0
            do throws(CatenaError) {
                for e in kept {
                    let bytes = try filesByID[e.location.segment]!.read(at: e.location.offset, count: Int(e.location.length))
                    guard let record = try? EncodedRecord(validating: bytes) else {
                        throw CatenaError(.corruption, "segment \(e.location.segment) offset \(e.location.offset): record \(e.lsn) fails its checksum; compaction of this group skipped")
                    }
                    let location = Location(segment: id, offset: offset, length: UInt32(record.count))
                    oldLocations.append(e.location)
                    newEntries.append(record.summary(at: location))
                    pending.append(record.bytes)
                    pendingBytes += record.count
                    offset += UInt64(record.count)
                    if pendingBytes >= 4 << 20 {
                        try out.write(pending, at: writeAt)
                        writeAt += UInt64(pendingBytes)
                        pending = []
                        pendingBytes = 0
                    }
                }
                if !pending.isEmpty { try out.write(pending, at: writeAt) }
                try out.sync()
            } catch {
                out.close()
                try? fs.remove(tmp)
                if error.code == .corruption {
                    logger.error("compaction skipped a damaged group", metadata: .catena([.error: "\(error)"]))
                    return nil
                }
                throw error
            }
            out.close()
            let file = try fs.open(tmp, mode: .readWrite)
            newSegment = SegmentState(id: id, file: file, header: header, size: offset, lastLSN: kept.last!.lsn, recordCount: kept.count, sealed: true, writtenSize: offset,
                                      maxTimestamp: kept.map(\.header.timestamp).max()!, lastTimestamp: kept.last!.header.timestamp)
        }

        // Record the dropped history before the rewrite can become visible.
        if maxDropped > state.withLock({ $0.persistent.compactedThrough }) {
            try persistState { $0.compactedThrough = max($0.compactedThrough, maxDropped) }
        }
        if let newSegment, let tmpPath {
            try fs.rename(tmpPath, to: dir.segment(newSegment.id))
            try fs.syncDirectory(dir.path)
        }

        // Swap in memory, re-checking what may have changed since planning.
        let swapped: Bool = state.withLock { s in
            guard let start = s.segments.firstIndex(where: { $0.id == oldIDs[0] }),
                  start + oldIDs.count <= s.segments.count,
                  Array(s.segments[start..<(start + oldIDs.count)].map(\.id)) == oldIDs else { return false }
            // Chunks of abandoned uploads: only if no manifest for them was enqueued or became
            // durable meanwhile (a manifest that is now its key's version needs its chunks).
            // Nor if a part record taken since planning (durable by now or not) made the group a
            // part of an open upload: planning saw it as an abandoned group.
            let partGroups = Set(s.uploadTracker.multipart.values.flatMap { $0.parts.values.map(\.group) })
            for e in droppedEntries where e.header.type == .chunk {
                guard let a = e.chunkAddress else { continue }
                if s.index.objects[e.key]?.groups[a.upload] != nil { return false }
                if s.index.uploads[a.upload] != nil && s.uploadTracker.groups[a.upload] == nil { return false }
                if partGroups.contains(a.upload) { return false }
            }
            let collected = Set(droppedEntries.compactMap { e -> UploadID? in
                guard e.header.type == .chunk, let a = e.chunkAddress, s.index.uploads[a.upload] != nil else { return nil }
                return a.upload
            })
            let droppedTombstones = droppedEntries.filter { $0.header.type == .delete && s.index.objects[$0.key]?.lsn == $0.lsn }

            for upload in collected {
                s.index.uploads[upload] = nil
                s.uploadTracker.groups[upload] = nil
            }
            for t in droppedTombstones { s.index.remove(t.key) }
            // Older versions kept for CRAQ reads: forget those the watermark passed (and, to be
            // sure, any that needs a dropped record); move the rest with their records.
            s.refreshCommitHint(noted: notedCommit.load(ordering: .relaxed))
            s.index.forgetOlderVersions(needing: droppedEntries)
            for (e, old) in zip(newEntries, oldLocations) {
                s.index.relocate(e, from: old)
            }
            s.index.recountGarbage(replacing: oldIDs, with: newEntries)
            s.segments.replaceSubrange(start..<(start + oldIDs.count), with: newSegment.map { [$0] } ?? [])
            return true
        }
        guard swapped else {
            // Planning went stale (never expected while maintenance is serialized): undo.
            if let newSegment {
                newSegment.file.close()
                try fs.remove(dir.segment(newSegment.id))
                try fs.syncDirectory(dir.path)
            }
            logger.warning("compaction group skipped: the log changed while it was planned")
            return nil
        }
        // Remove the replaced files. The new segment's header names every one of them, so
        // start-up removes whichever a crash leaves: one directory fsync at the end will do
        // (a fsync per file, each waiting for the unlink of 64 MiB, stalled appends for up to
        // 0.36 s in `catena bench-compaction`). Without a new segment (nothing in the group
        // was live) nothing names them: they go oldest first, each removal durable before the
        // next, so a crash never leaves a newer version without an older one it superseded
        // having been removed first.
        for id in oldIDs {
            try fs.remove(dir.segment(id))
            try fs.remove(dir.hint(id))
            if newSegment == nil { try fs.syncDirectory(dir.path) }
        }
        if newSegment != nil { try fs.syncDirectory(dir.path) }
        // The old handles are not closed here: readers may still hold them (they close when released).
        if let newSegment {
            writeHint(segment: newSegment.id, size: newSegment.size, entries: newEntries)
        }
        return (droppedEntries.count, newSegment?.size ?? 0)
    }
}

/// Asks a running compaction to stop after the group it is rewriting.
final class CompactionStop: Sendable {
    private let flag = Atomic<Bool>(false)
    /// Whether a stop was asked for.
    var requested: Bool { flag.load(ordering: .relaxed) }
    /// Asks for a stop.
    func request() { flag.store(true, ordering: .relaxed) }
}

extension StoreIndex {
    /// Points whatever referenced the record at `old` to its new location: the newest version
    /// of its key, or a kept older one (a manifest's chunks included), or an upload.
    mutating func relocate(_ e: EntrySummary, from old: Location) {
        switch e.header.type {
        case .chunk:
            guard let address = e.chunkAddress else { return }
            if uploads[address.upload]?.chunks[address.index] == old {
                uploads[address.upload]!.chunks[address.index] = e.location
            } else if var v = objects[e.key], StoreIndex.relocateChunk(address, of: &v, from: old, to: e.location) {
                objects[e.key] = v
            } else if let versions = older[e.key],
                      let i = versions.firstIndex(where: { $0.groups[address.upload] != nil }) {
                var v = versions[i]
                if StoreIndex.relocateChunk(address, of: &v, from: old, to: e.location) { older[e.key]?[i] = v }
            }
        case .uploadCreate:
            if multipart[e.header.requestID]?.location == old { multipart[e.header.requestID]!.location = e.location }
        case .uploadPart:
            guard let body = e.part, multipart[body.upload]?.parts[body.part.number]?.location == old else { return }
            multipart[body.upload]!.parts[body.part.number]!.location = e.location
        case .uploadAbort, .fence:
            return
        default:
            if var v = objects[e.key], v.location == old {
                v.location = e.location
                objects[e.key] = v
            } else if let i = older[e.key]?.firstIndex(where: { $0.location == old }) {
                older[e.key]?[i].location = e.location
            }
        }
    }

    /// Points the chunk at `address` of manifest version `v` from `old` to `new`; false if `v`
    /// does not hold that chunk there.
    private static func relocateChunk(_ address: ChunkAddress, of v: inout ObjectVersion, from old: Location, to new: Location) -> Bool {
        guard let start = v.groups[address.upload] else { return false }
        let i = start + Int(address.index)
        guard i < v.chunks.count, v.chunks[i] == old else { return false }
        v.chunks[i] = new
        return true
    }
}

/// What decides whether a record may be dropped. See ``Store/compact()``.
struct LivenessFacts {
    let watermark: LSN
    let now: UInt64
    let timeout: UInt64
    /// Records inside it are kept whatever else holds: retries may still carry their ids.
    let window: RequestWindow
    /// Chunk groups no manifest claimed yet, with their newest chunk's timestamp.
    let pendingUploads: [UploadID: UInt64]
    /// Open multipart uploads, with the LSNs of their current parts' records.
    let openUploads: [UploadID: Set<LSN>]
    /// The chunk groups of open uploads' current parts: kept while their upload is (which ends
    /// later than their own timestamps say, by the clock-skew allowance).
    let openPartGroups: Set<UploadID>
    /// Per key, the newest put, delete or manifest at or below the watermark.
    var newestAtWatermark: [Key: LSN] = [:]
    /// Per upload, its manifest's LSN and head timestamp.
    var manifests: [UploadID: (lsn: LSN, timestamp: UInt64)] = [:]
    /// Multipart uploads whose creation record is still in the log.
    var created: Set<UploadID> = []
    /// Some records could not be read (damage): a chunk whose manifest is unknown is kept, and
    /// no tombstone is dropped.
    var incomplete = false
    /// Per key, the segments holding each of its records (any type), with their LSNs and
    /// whether the request-id window keeps them.
    var recordsOf: [Key: [(segment: UInt64, lsn: LSN, inWindow: Bool)]] = [:]

    init(watermark: LSN, now: UInt64, timeout: UInt64, window: RequestWindow, pendingUploads: [UploadID: UInt64],
         openUploads: [UploadID: (parts: Set<LSN>, groups: Set<UploadID>)] = [:]) {
        self.watermark = watermark
        self.now = now
        self.timeout = timeout
        self.window = window
        self.pendingUploads = pendingUploads
        self.openUploads = openUploads.mapValues(\.parts)
        self.openPartGroups = openUploads.values.reduce(into: Set()) { $0.formUnion($1.groups) }
    }

    mutating func learn(_ e: EntrySummary) {
        guard !e.damaged else { return }
        recordsOf[e.key, default: []].append((e.location.segment, e.lsn, window.contains(e.header.timestamp)))
        switch e.header.type {
        case .put, .delete, .manifest:
            if e.lsn <= watermark, newestAtWatermark[e.key].map({ $0 < e.lsn }) ?? true {
                newestAtWatermark[e.key] = e.lsn
            }
            if e.header.type == .manifest, let m = e.manifest {
                for group in m.groups { manifests[group.id] = (e.lsn, e.header.timestamp) }
            }
        case .uploadCreate:
            created.insert(e.header.requestID)
        default:
            break
        }
    }

    /// Whether every record of `tombstone`'s key older than it lies in `segments` and is
    /// outside the request-id window (so all of them go in the same rewrite).
    func olderVersionsLie(of tombstone: EntrySummary, within segments: Set<UInt64>) -> Bool {
        guard !incomplete else { return false }
        return (recordsOf[tombstone.key] ?? []).allSatisfy { $0.lsn >= tombstone.lsn || (segments.contains($0.segment) && !$0.inWindow) }
    }

    /// Whether `entries` hold a tombstone that is its key's newest version at the watermark
    /// and outside the request-id window.
    func hasDroppableTombstone(_ entries: [EntrySummary]) -> Bool {
        entries.contains {
            $0.header.type == .delete && $0.lsn <= watermark && newestAtWatermark[$0.key] == $0.lsn && !window.contains($0.header.timestamp)
        }
    }

    /// Whether a record must be kept whatever its key's later history: damaged, above the
    /// watermark (a truncation may still need it), or inside the request-id window.
    private func keptRegardless(lsn: LSN, timestamp: UInt64) -> Bool {
        lsn > watermark || window.contains(timestamp)
    }

    /// Whether `e` must be kept. `tombstoneDroppable`: every older record of `e`'s key dies in
    /// the same rewrite, so a tombstone that is its key's newest version may go too.
    func isLive(_ e: EntrySummary, tombstoneDroppable dropTombstones: Bool) -> Bool {
        if e.damaged || keptRegardless(lsn: e.lsn, timestamp: e.header.timestamp) { return true }
        let newest = newestAtWatermark[e.key]
        switch e.header.type {
        case .put, .manifest:
            // A multipart manifest is kept while its upload's creation is in the log: dropped
            // alone, a creation left in a group compaction skipped would reopen the upload at
            // the next start.
            if let m = e.manifest, !m.parts.isEmpty, created.contains(m.upload) { return true }
            return !(newest.map { $0 > e.lsn } ?? false)
        case .delete:
            guard let newest else { return true }
            if newest == e.lsn { return !dropTombstones }
            return newest < e.lsn
        case .chunk:
            guard let address = e.chunkAddress else { return true }
            if openPartGroups.contains(address.upload) { return true }
            if let last = pendingUploads[address.upload] {
                return last &+ timeout >= now
            }
            guard let manifest = manifests[address.upload] else {
                // Neither pending nor manifested: an upload already collected (unless the
                // manifest may sit in damaged bytes).
                return incomplete
            }
            // A manifest that is kept keeps its chunks (a kept manifest without its chunks
            // could not be copied: its upload would be incomplete).
            if keptRegardless(lsn: manifest.lsn, timestamp: manifest.timestamp) { return true }
            return !(newest.map { $0 > manifest.lsn } ?? false)
        case .fence:
            // Its one job, refusing a late copy of its write, ends with the request window.
            return false
        case .uploadAbort:
            // Kept while its upload's creation is in the log (a rewrite that drops the abort but
            // not the creation — a group left alone — would reopen the upload at the next start).
            guard let id = e.abortedUpload else { return false }
            return created.contains(id) || incomplete
        case .uploadCreate:
            // An open upload needs it (a completed one's manifest names everything it needs).
            return openUploads[e.header.requestID] != nil
        case .uploadPart:
            guard let body = e.part else { return true }
            return openUploads[body.upload]?.contains(e.lsn) ?? false
        default:
            return true
        }
    }
}
