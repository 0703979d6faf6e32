import CatenaCore
import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What start-up (or a rebuild after truncation) found on disk.
struct Recovered {
    var segments: [Store.SegmentState] = []
    var index = StoreIndex()
    var activeEntries: [EntrySummary] = []
    var damage: [Damage] = []
    var persistent = PersistentState()
    var highest: LSN = .zero
    var nextSegmentID: UInt64 = 1
    var tornBytesDropped = 0
}

/// Start-up recovery: clean temp files, finish interrupted compactions, order segments, load
/// each (from its hint when valid, else by scanning), truncate a torn tail, report corruption.
struct Recovery {
    let fs: any FileSystem
    let dir: DataDirectory
    let logger: Logger

    /// Loads the log. `atStartUp`: also remove temp files (writes that never completed); a
    /// rebuild while the store runs must not, since a concurrent STATE write may own one.
    /// `notedCommit`: the seq the node last noted as committed (``Store/noteCommitted(through:)``);
    /// with the persisted watermark it is the index's commit hint, so the index keeps the older
    /// versions above it (see ``StoreIndex/older``).
    func open(names: [String], atStartUp: Bool = true, notedCommit: UInt64 = 0) throws(CatenaError) -> Recovered {
        var result = Recovered()
        var names = names
        for name in names where atStartUp && name.hasSuffix(".tmp") {
            try fs.remove(dir.path + "/" + name)
            logger.info("removed unfinished temp file", metadata: .catena([.path: "\(name)"]))
        }
        names.removeAll { $0.hasSuffix(".tmp") }
        if names.contains("STATE") {
            let file = try fs.open(dir.state, mode: .read)
            defer { file.close() }
            result.persistent = try PersistentState.decode(try file.read(at: 0, count: 64), path: dir.state)
        }
        // Before any record is applied: the overwrites above it keep their older versions.
        result.index.commitHint = max(notedCommit, result.persistent.commitWatermark.seq)

        var opened: [(header: SegmentHeader, file: any StorageFile, size: UInt64)] = []
        let ids = names.compactMap(DataDirectory.segmentID(fromName:)).sorted()
        result.nextSegmentID = (ids.last ?? 0) + 1
        var tornHeaders: [(id: UInt64, file: any StorageFile, size: UInt64, error: CatenaError)] = []
        for id in ids {
            let path = dir.segment(id)
            let file = try fs.open(path, mode: .readWrite)
            let size = try file.size()
            let header: SegmentHeader
            do throws(CatenaError) {
                header = try SegmentHeader.read(from: file)
            } catch where error.code == .corruption {
                tornHeaders.append((id, file, size, error))
                continue
            }
            // A readable header naming another segment is not a torn write: never delete it.
            guard header.id == id else {
                throw CatenaError(.corruption, "\(path): header names segment \(header.id); was the file renamed or copied?")
            }
            opened.append((header, file, size))
        }
        // A segment whose header is unreadable: the writer writes the header before any record
        // and fsyncs before acknowledging, so if the header never became durable, nothing in
        // the file was acknowledged — provided the file is the newest part of the log (its
        // records, if any, follow every other segment's). Compaction and truncation outputs are
        // fsynced before they are renamed into place, so they never have torn headers.
        let newestStart = opened.map(\.header.firstLSN.seq).max() ?? 0
        for torn in tornHeaders {
            var scanner = SegmentScanner(file: torn.file, segment: torn.id, from: 0, end: torn.size)
            var firstSeq: UInt64?
            var records = 0
            while let item = try scanner.next() {
                if case .record(let r, _) = item {
                    firstSeq = firstSeq ?? r.lsn.seq
                    records += 1
                }
            }
            guard firstSeq.map({ $0 > newestStart }) ?? true else {
                throw CatenaError(.corruption, "\(torn.error.message); it holds records from seq \(firstSeq!) in the middle of the log, so it cannot be a segment whose creation was cut off")
            }
            torn.file.close()
            try fs.remove(dir.segment(torn.id))
            try fs.syncDirectory(dir.path)
            result.tornBytesDropped += Int(torn.size)
            logger.warning("removed a segment whose creation was cut off (torn header; its records were never acknowledged)", metadata: .catena([
                .path: "\(dir.segment(torn.id))", .segmentBytes: "\(torn.size)", .recordsRemoved: "\(records)",
            ]))
        }
        // Finish interrupted compactions and truncations: outputs name what they replace.
        let replaced = Set(opened.flatMap(\.header.replaces))
        if !replaced.isEmpty {
            var removedAny = false
            for entry in opened where replaced.contains(entry.header.id) {
                entry.file.close()
                try fs.remove(dir.segment(entry.header.id))
                try fs.remove(dir.hint(entry.header.id))
                removedAny = true
                logger.info("removed segment replaced by an interrupted compaction", metadata: .catena([.segment: "\(entry.header.id)"]))
            }
            if removedAny { try fs.syncDirectory(dir.path) }
            opened.removeAll { replaced.contains($0.header.id) }
        }
        opened.sort { ($0.header.firstLSN.seq, $0.header.id) < ($1.header.firstLSN.seq, $1.header.id) }

        let hintNames = Set(names.filter { $0.hasSuffix(".hint") })
        var previous = LSN.zero
        /// Damage whose header was lost, waiting for the next valid record to bound what it lost.
        var unbounded: [Int] = []
        for (i, entry) in opened.enumerated() {
            let isLast = i == opened.count - 1
            let id = entry.header.id
            var items: [ScanItem]? = nil
            if hintNames.contains(DataDirectory.name(id) + ".hint"), let hinted = loadHint(id: id, size: entry.size) {
                items = hinted.map { .summary($0) }
            }
            let sealed = !isLast || items != nil
            var size = entry.size
            if items == nil {
                var found: [ScanItem] = []
                var scanner = SegmentScanner(file: entry.file, segment: id, from: UInt64(entry.header.size), end: entry.size)
                var lastGood = UInt64(entry.header.size)
                while let item = try scanner.next() {
                    if case .record(_, let loc) = item { lastGood = loc.offset + UInt64(loc.length) }
                    found.append(item)
                }
                // Everything after the last valid record of the last segment is a torn write
                // (a crash mid-append can leave several damaged stretches there): cut it all.
                // The writer zero-fills the active segment ahead of its records (see
                // `StoreConfiguration.zeroFillAhead`): an all-zero end is that, not a torn write.
                if isLast, found.contains(where: { if case .damage(let d) = $0 { return d.offset >= lastGood } else { return false } }) {
                    let dropped = entry.size - lastGood
                    found.removeAll { if case .damage(let d) = $0 { return d.offset >= lastGood } else { return false } }
                    let zeroFilled = try Recovery.isZero(entry.file, from: lastGood, to: entry.size)
                    try entry.file.truncate(to: lastGood)
                    try entry.file.sync()
                    size = lastGood
                    if zeroFilled {
                        logger.info("dropped the zero-filled end of the active segment", metadata: .catena([
                            .path: "\(entry.file.path)", .offset: "\(lastGood)", .bytesDropped: "\(dropped)",
                        ]))
                    } else {
                        result.tornBytesDropped += Int(dropped)
                        logger.warning("truncated torn write at the end of the log", metadata: .catena([
                            .path: "\(entry.file.path)", .offset: "\(lastGood)", .bytesDropped: "\(dropped)",
                        ]))
                    }
                }
                let clean = !found.contains { if case .damage = $0 { return true } else { return false } }
                if sealed && clean {
                    // Save the next start-up the scan.
                    let summaries = found.compactMap { item -> EntrySummary? in
                        if case .record(let r, let loc) = item { return r.summary(at: loc) } else { return nil }
                    }
                    HintWriter(fs: fs, dir: dir, logger: logger).write(segment: id, size: size, entries: summaries)
                }
                items = found
            }

            var state = Store.SegmentState(id: id, file: entry.file, header: entry.header, size: size, lastLSN: previous, recordCount: 0, sealed: sealed, writtenSize: size)
            var activeEntries: [EntrySummary] = []
            for item in items! {
                let e: EntrySummary
                switch item {
                case .record(let r, let loc): e = r.summary(at: loc)
                case .summary(let summary): e = summary
                case .damage(let d):
                    logger.error("corruption: refusing to serve damaged records, keeping the valid ones", metadata: .catena([.damage: "\(d)"]))
                    result.damage.append(d)
                    if let header = d.header, let key = d.key {
                        state.maxTimestamp = max(state.maxTimestamp, header.timestamp)
                        // Only the body is damaged: refuse exactly that key while this is its newest version.
                        if header.lsn.seq > previous.seq {
                            result.index.applyDamaged(EntrySummary(header: header, key: key, extensions: [], location: Location(segment: id, offset: d.offset, length: UInt32(d.length)), damaged: true))
                        }
                    } else {
                        unbounded.append(result.damage.count - 1)
                    }
                    continue
                }
                if e.lsn.seq <= previous.seq && previous != .zero {
                    let d = Damage(path: entry.file.path, segment: id, offset: e.location.offset, length: UInt64(e.location.length), header: e.header, key: e.key)
                    result.damage.append(d)
                    logger.error("corruption: record out of LSN order", metadata: .catena([.damage: "\(d)", .previousLSN: "\(previous)"]))
                    continue
                }
                // The records a header-lost stretch held had LSNs between its neighbours.
                for u in unbounded where e.lsn.seq > previous.seq + 1 {
                    result.damage[u].lost = (previous.seq + 1)...(e.lsn.seq - 1)
                }
                unbounded.removeAll()
                result.index.apply(e)
                activeEntries.append(e)
                previous = e.lsn
                state.lastLSN = e.lsn
                state.recordCount += 1
                state.maxTimestamp = max(state.maxTimestamp, e.header.timestamp)
                state.lastTimestamp = e.header.timestamp
            }
            if isLast && !sealed { result.activeEntries = activeEntries }
            result.segments.append(state)
        }
        // Header-lost damage after the last valid record (only possible at the end of a sealed
        // segment followed by an empty one): it may have held the next record.
        for u in unbounded { result.damage[u].lost = (previous.seq + 1)...(previous.seq + 1) }
        // The log's end is at least the commit watermark: compaction may have dropped the
        // records at the very end (a tombstone at the watermark, say), and a seq is never reused.
        result.highest = max(previous, result.persistent.commitWatermark)
        return result
    }

    /// Whether bytes `[from, to)` of `file` are all zero.
    static func isZero(_ file: any StorageFile, from: UInt64, to: UInt64) throws(CatenaError) -> Bool {
        var at = from
        while at < to {
            let chunk = try file.read(at: at, count: Int(min(UInt64(1 << 20), to - at)))
            guard !chunk.isEmpty else { return true }
            let zero = chunk.withUnsafeBytes { raw in
                raw[0] == 0 && (raw.count == 1 || memcmp(raw.baseAddress!, raw.baseAddress! + 1, raw.count - 1) == 0)
            }
            guard zero else { return false }
            at += UInt64(chunk.count)
        }
        return true
    }

    private func loadHint(id: UInt64, size: UInt64) -> [EntrySummary]? {
        guard let entries = HintFile.load(fs: fs, dir: dir, segment: id, segmentSize: size) else {
            logger.warning("ignoring stale or damaged hint file; scanning the segment", metadata: .catena([.path: "\(dir.hint(id))"]))
            return nil
        }
        return entries
    }
}

/// Writes hint files (a cache: no fsync; a damaged hint only costs a scan).
struct HintWriter {
    let fs: any FileSystem
    let dir: DataDirectory
    let logger: Logger

    func write(segment: UInt64, size: UInt64, entries: [EntrySummary]) {
        let path = dir.hint(segment)
        do {
            try fs.remove(path + ".tmp")
            let file = try fs.open(path + ".tmp", mode: .createNew)
            defer { file.close() }
            try file.write(HintFile.encode(segment: segment, segmentSize: size, entries: entries), at: 0)
            try fs.rename(path + ".tmp", to: path)
        } catch {
            logger.warning("could not write hint file; start-up will scan the segment", metadata: .catena([.segment: "\(segment)", .error: "\(error)"]))
        }
    }
}
