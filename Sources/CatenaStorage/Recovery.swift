import CatenaCore
import Logging

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

    func open(names: [String]) throws(CatenaError) -> Recovered {
        var result = Recovered()
        var names = names
        // Temp files are writes that never completed.
        for name in names where name.hasSuffix(".tmp") {
            try fs.remove(dir.path + "/" + name)
            logger.info("removed unfinished temp file", metadata: ["file": "\(name)"])
        }
        names.removeAll { $0.hasSuffix(".tmp") }
        if names.contains("STATE") {
            let file = try fs.open(dir.state, mode: .read)
            defer { file.close() }
            result.persistent = try PersistentState.decode(try file.read(at: 0, count: 64), path: dir.state)
        }

        var opened: [(header: SegmentHeader, file: any StorageFile, size: UInt64)] = []
        let ids = names.compactMap(DataDirectory.segmentID(fromName:)).sorted()
        result.nextSegmentID = (ids.last ?? 0) + 1
        for id in ids {
            let path = dir.segment(id)
            let file = try fs.open(path, mode: .readWrite)
            let size = try file.size()
            do throws(CatenaError) {
                let header = try SegmentHeader.read(from: file)
                guard header.id == id else {
                    throw CatenaError(.corruption, "\(path): header names segment \(header.id)")
                }
                opened.append((header, file, size))
            } catch where error.code == .corruption && id == ids.last && size < 4096 {
                // A segment whose creation was cut off before its header became durable.
                file.close()
                try fs.remove(path)
                try fs.syncDirectory(dir.path)
                logger.warning("removed segment with torn header", metadata: ["file": "\(path)", "bytes": "\(size)"])
            }
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
                logger.info("removed segment replaced by an interrupted compaction", metadata: ["segment": "\(entry.header.id)"])
            }
            if removedAny { try fs.syncDirectory(dir.path) }
            opened.removeAll { replaced.contains($0.header.id) }
        }
        opened.sort { ($0.header.firstLSN.seq, $0.header.id) < ($1.header.firstLSN.seq, $1.header.id) }

        let hintNames = Set(names.filter { $0.hasSuffix(".hint") })
        var previous = LSN.zero
        for (i, entry) in opened.enumerated() {
            let isLast = i == opened.count - 1
            let id = entry.header.id
            var entries: [EntrySummary]? = nil
            if hintNames.contains(DataDirectory.name(id) + ".hint") {
                entries = loadHint(id: id, size: entry.size)
            }
            let sealed = !isLast || entries != nil
            var segmentDamage: [Damage] = []
            var size = entry.size
            if entries == nil {
                var found: [EntrySummary] = []
                var scanner = SegmentScanner(file: entry.file, segment: id, from: UInt64(entry.header.size), end: entry.size)
                var lastGood = UInt64(entry.header.size)
                while let item = try scanner.next() {
                    switch item {
                    case .record(let r, let loc):
                        found.append(r.summary(at: loc))
                        lastGood = loc.offset + UInt64(loc.length)
                    case .damage(let d):
                        segmentDamage.append(d)
                    }
                }
                // Damage after the last valid record of the last segment is a torn write.
                if isLast, let torn = segmentDamage.last, torn.offset >= lastGood {
                    segmentDamage.removeLast()
                    try entry.file.truncate(to: torn.offset)
                    try entry.file.sync()
                    size = torn.offset
                    result.tornBytesDropped += Int(torn.length)
                    logger.warning("truncated torn write at the end of the log", metadata: [
                        "file": "\(entry.file.path)", "offset": "\(torn.offset)", "bytes_dropped": "\(torn.length)",
                    ])
                }
                for d in segmentDamage {
                    logger.error("corruption: refusing to serve damaged records, keeping the valid ones", metadata: ["damage": "\(d)"])
                }
                entries = found
                if sealed && segmentDamage.isEmpty {
                    // Save the next start-up the scan.
                    HintWriter(fs: fs, dir: dir, logger: logger).write(segment: id, size: size, entries: found)
                }
            }
            var state = Store.SegmentState(id: id, file: entry.file, header: entry.header, size: size, lastLSN: previous, recordCount: 0, sealed: sealed)
            for e in entries! {
                if e.lsn.seq <= previous.seq && previous != .zero {
                    let d = Damage(path: entry.file.path, segment: id, offset: e.location.offset, length: UInt64(e.location.length), header: e.header)
                    segmentDamage.append(d)
                    logger.error("corruption: record out of LSN order", metadata: ["damage": "\(d)", "previous": "\(previous)"])
                    continue
                }
                result.index.apply(e)
                previous = e.lsn
                state.lastLSN = e.lsn
                state.recordCount += 1
            }
            // Damaged records whose header survived: refuse to serve that key's version.
            for d in segmentDamage {
                if let header = d.header, header.lsn.seq > 0 {
                    if let keyBytes = try? readKey(entry.file, d), let key = try? Key(bytes: keyBytes) {
                        let newer = result.index.objects[key].map { $0.lsn > header.lsn } ?? false
                        if !newer {
                            result.index.applyDamaged(EntrySummary(header: header, key: key, extensions: [], location: Location(segment: id, offset: d.offset, length: UInt32(d.length)), damaged: true))
                        }
                    }
                }
            }
            result.damage.append(contentsOf: segmentDamage)
            if isLast && !sealed { result.activeEntries = entries! }
            result.segments.append(state)
        }
        result.highest = previous
        // Records that a later damaged record overwrote are handled above; a later valid record
        // for the same key naturally supersedes a damaged one.
        return result
    }

    private func readKey(_ file: any StorageFile, _ d: Damage) throws(CatenaError) -> [UInt8] {
        guard let header = d.header else { return [] }
        return try file.read(at: d.offset + UInt64(RecordHeader.size), count: header.keyLength)
    }

    private func loadHint(id: UInt64, size: UInt64) -> [EntrySummary]? {
        let path = dir.hint(id)
        guard let file = try? fs.open(path, mode: .read) else { return nil }
        defer { file.close() }
        guard let length = try? file.size(), length < 1 << 31, let bytes = try? file.read(at: 0, count: Int(length)),
              let entries = HintFile.decode(bytes, segment: id, segmentSize: size) else {
            logger.warning("ignoring stale or damaged hint file; scanning the segment", metadata: ["file": "\(path)"])
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
            logger.warning("could not write hint file; start-up will scan the segment", metadata: ["segment": "\(segment)", "error": "\(error)"])
        }
    }
}
