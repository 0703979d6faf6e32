import CatenaCore
import NIOPosix

/// What ``DataDirectoryVerifier`` found in a stopped node's data directory.
public struct DataDirectoryReport: Hashable, Sendable {
    /// Something wrong with the directory's files: damage start-up would report (or would not
    /// notice), records out of order, objects that cannot be read back intact.
    public struct Problem: Hashable, Sendable, CustomStringConvertible {
        /// What is wrong.
        public enum Kind: String, Hashable, Sendable, CaseIterable {
            /// The `IDENTITY` file is unreadable or missing while segments exist.
            case identity
            /// The `STATE` file is unreadable.
            case state
            /// A segment's header is unreadable or names another segment.
            case segmentHeader
            /// Bytes that should be a record fail its checks: a record checksum, the header, or
            /// the framing (the scan had to search for the next record).
            case record
            /// A record out of LSN order.
            case order
            /// An object whose bytes do not match its content checksum, or whose chunks are not
            /// all in the log.
            case content
            /// A hint file that disagrees with its segment (start-up trusts valid hints).
            case hint
        }

        /// What is wrong.
        public var kind: Kind
        /// The file, by name (in the directory).
        public var file: String
        /// Where in the file, if it is about a place.
        public var offset: UInt64?
        /// The record's LSN, when known.
        public var lsn: LSN?
        /// The record's key, when readable (a record's header checksum covers its key).
        public var key: Key?
        /// What is wrong, for humans.
        public var message: String

        /// Creates a problem.
        public init(kind: Kind, file: String, offset: UInt64? = nil, lsn: LSN? = nil, key: Key? = nil, message: String) {
            self.kind = kind
            self.file = file
            self.offset = offset
            self.lsn = lsn
            self.key = key
            self.message = message
        }

        /// `FILE offset N, record L, key K: MESSAGE`.
        public var description: String {
            var place = file
            if let offset { place += " offset \(offset)" }
            if let lsn { place += ", record \(lsn)" }
            if let key { place += ", key \(key)" }
            return "\(place): \(message)"
        }
    }

    /// The directory.
    public var directory: String
    /// Its owner, from `IDENTITY` (nil if unreadable).
    public var clusterID: String?
    public var nodeID: String?
    /// Segments read (not counting those start-up would remove).
    public var segments = 0
    /// Records read and verified.
    public var records = 0
    /// Bytes of segment files read.
    public var bytes: UInt64 = 0
    /// Live objects whose content was read back and matched.
    public var objects = 0
    /// The last valid record's LSN.
    public var highestLSN: LSN = .zero
    /// What is normal after a crash or a stop and start-up tidies (a torn or zero-filled end of
    /// the last segment, temp files, segments an interrupted compaction replaced, stale hints),
    /// for humans.
    public var notes: [String] = []
    /// What is wrong.
    public var problems: [Problem] = []

    /// Creates an empty report.
    public init(directory: String) {
        self.directory = directory
    }
}

/// The offline check behind `catena node verify`: reads every file of a stopped node's data
/// directory and checks every record, without changing a byte.
///
/// Start-up recovery (`Store.open`) trusts valid hint files, so it never reads the values of
/// sealed segments, and it repairs what it finds (cuts a torn tail, removes temp files and
/// replaced segments). This check does neither: it opens every file read-only, scans every
/// segment whole — segment headers, every record's header and record checksums, the framing
/// between records, LSN order across the log — checks each put's value against its content
/// checksum, reads every live chunked object back through its manifest (chunks present, content
/// checksum), and compares every valid hint file with its segment. What start-up would tidy is
/// reported as a note; everything else as a problem. It holds a shared lock on the directory's
/// `LOCK` file while it reads, so it refuses a directory a running node holds, and no node can
/// open the directory meanwhile.
public enum DataDirectoryVerifier {
    /// Checks the data directory at `directory`. `progress` gets the segment bytes read so far
    /// and in all, after each segment. Throws only if the directory cannot be checked at all
    /// (missing, unreadable, locked by a running node, not a data directory).
    public static func verify(directory: String, fileSystem: any FileSystem = PosixFileSystem(),
                              progress: @escaping @Sendable (_ done: UInt64, _ total: UInt64) -> Void = { _, _ in })
        async throws(CatenaError) -> DataDirectoryReport {
        let pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
        defer { pool.shutdownGracefully { _ in } }
        let dir = DataDirectory(path: directory)
        let (scanned, lock) = try await runBlocking(on: pool) { () throws(CatenaError) -> (Scanned, SendableLock?) in
            try scan(dir: dir, fs: fileSystem, progress: progress)
        }
        defer { lock?.lock.release() }
        var report = scanned.report
        // Live chunked objects, read back through their manifests.
        for object in scanned.chunked {
            var pieces = object.body(pool: pool).makeAsyncIterator()
            do throws(CatenaError) {
                while try await pieces.nextPiece() != nil {}
                report.objects += 1
            } catch {
                report.problems.append(DataDirectoryReport.Problem(
                    kind: .content, file: object.file, offset: object.offset, lsn: object.lsn, key: object.key,
                    message: "the object cannot be read back intact: \(error.message)"))
            }
        }
        return report
    }

    /// A held lock, passed out of the blocking scan.
    struct SendableLock: @unchecked Sendable {
        // A FileLock is used by one thread at a time here: taken on the pool, released after.
        let lock: any FileLock
    }

    /// A live chunked object to read back, with the files that hold its chunks.
    struct ChunkedObject: Sendable {
        var key: Key
        var lsn: LSN
        var file: String
        var offset: UInt64
        var parts: [ObjectBody.Part]
        var contentChecksum: UInt64
        var objectParts: [PartSummary]
        var size: UInt64

        func body(pool: NIOThreadPool) -> ObjectBody {
            ObjectBody(parts: parts, contentChecksum: contentChecksum, objectParts: objectParts, size: size, pool: pool)
        }
    }

    /// What the blocking scan found.
    struct Scanned: Sendable {
        var report: DataDirectoryReport
        var chunked: [ChunkedObject]
    }

    /// Everything but reading chunked objects back: blocking, on a thread of its own.
    static func scan(dir: DataDirectory, fs: any FileSystem,
                     progress: @Sendable (UInt64, UInt64) -> Void) throws(CatenaError) -> (Scanned, SendableLock?) {
        var report = DataDirectoryReport(directory: dir.path)
        let names: [String]
        do {
            names = try fs.contentsOfDirectory(dir.path)
        } catch {
            throw CatenaError(error.code == .permissionDenied ? .permissionDenied : .directoryUnreadable,
                              "cannot read data directory \(dir.path): \(error.message)")
        }
        let segmentNames = names.filter { DataDirectory.segmentID(fromName: $0) != nil }
        guard names.contains("IDENTITY") || !segmentNames.isEmpty else {
            throw CatenaError(.directoryUnreadable, "\(dir.path) is not a Catena data directory (no IDENTITY file, no segments)")
        }
        let lock = try fs.lockSharedIfExists(dir.lock).map(SendableLock.init)
        do {
            let chunked = try scan(names: names, dir: dir, fs: fs, report: &report, progress: progress)
            return (Scanned(report: report, chunked: chunked), lock)
        } catch {
            lock?.lock.release()
            throw error
        }
    }

    private static func scan(names: [String], dir: DataDirectory, fs: any FileSystem, report: inout DataDirectoryReport,
                             progress: @Sendable (UInt64, UInt64) -> Void) throws(CatenaError) -> [ChunkedObject] {
        func problem(_ kind: DataDirectoryReport.Problem.Kind, _ file: String, offset: UInt64? = nil, lsn: LSN? = nil, key: Key? = nil,
                     _ message: String) {
            report.problems.append(.init(kind: kind, file: file, offset: offset, lsn: lsn, key: key, message: message))
        }
        func name(_ path: String) -> String { String(path.split(separator: "/").last ?? Substring(path)) }

        // IDENTITY and STATE.
        if names.contains("IDENTITY") {
            do throws(CatenaError) {
                let file = try fs.open(dir.identity, mode: .read)
                defer { file.close() }
                let identity = try NodeIdentity.decode(try file.read(at: 0, count: 4096), path: dir.identity)
                report.clusterID = identity.clusterID
                report.nodeID = identity.nodeID
                if identity.formatVersion != DataDirectory.formatVersion {
                    problem(.identity, "IDENTITY", "on-disk format \(identity.formatVersion); this build reads \(DataDirectory.formatVersion)")
                }
            } catch {
                problem(.identity, "IDENTITY", error.message)
            }
        } else {
            problem(.identity, "IDENTITY", "missing, though the directory holds segments: start-up refuses the directory")
        }
        if names.contains("STATE") {
            do throws(CatenaError) {
                let file = try fs.open(dir.state, mode: .read)
                defer { file.close() }
                let state = try PersistentState.decode(try file.read(at: 0, count: 64), path: dir.state)
                report.notes.append("commit watermark \(state.commitWatermark), history compacted through \(state.compactedThrough)")
            } catch {
                problem(.state, "STATE", error.message)
            }
        }
        for n in names where n.hasSuffix(".tmp") {
            report.notes.append("\(n): an unfinished write; start-up removes it")
        }

        // Segment headers.
        var opened: [(header: SegmentHeader, file: any StorageFile, size: UInt64)] = []
        var torn: [(id: UInt64, file: any StorageFile, size: UInt64, message: String)] = []
        for id in names.compactMap(DataDirectory.segmentID(fromName:)).sorted() {
            let path = dir.segment(id)
            let file: any StorageFile
            let size: UInt64
            do throws(CatenaError) {
                file = try fs.open(path, mode: .read)
                size = try file.size()
            } catch {
                problem(.segmentHeader, name(path), "cannot be read: \(error.message)")
                continue
            }
            do throws(CatenaError) {
                let header = try SegmentHeader.read(from: file)
                guard header.id == id else {
                    problem(.segmentHeader, name(path), "its header names segment \(header.id): was the file renamed or copied?")
                    file.close()
                    continue
                }
                opened.append((header, file, size))
            } catch where error.code == .corruption {
                torn.append((id, file, size, error.message))
            } catch {
                problem(.segmentHeader, name(path), error.message)
                file.close()
            }
        }
        // A segment whose header is unreadable is a creation cut off if it holds nothing from
        // the middle of the log (start-up removes it), and damage otherwise.
        let newestStart = opened.map(\.header.firstLSN.seq).max() ?? 0
        for t in torn {
            var scanner = SegmentScanner(file: t.file, segment: t.id, from: 0, end: t.size)
            var firstSeq: UInt64?
            while let item = try scanner.next() {
                if case .record(let r, _) = item { firstSeq = firstSeq ?? r.lsn.seq }
            }
            t.file.close()
            if let firstSeq, firstSeq <= newestStart {
                problem(.segmentHeader, name(dir.segment(t.id)), "\(t.message); it holds records from seq \(firstSeq), in the middle of the log")
            } else {
                report.notes.append("\(name(dir.segment(t.id))): \(t.message); a segment whose creation was cut off (start-up removes it)")
            }
        }
        // Segments a compaction or truncation replaced (its output names them).
        let replaced = Set(opened.flatMap(\.header.replaces))
        for entry in opened where replaced.contains(entry.header.id) {
            report.notes.append("\(name(entry.file.path)): replaced by an interrupted compaction or truncation; start-up removes it")
            entry.file.close()
        }
        opened.removeAll { replaced.contains($0.header.id) }
        opened.sort { ($0.header.firstLSN.seq, $0.header.id) < ($1.header.firstLSN.seq, $1.header.id) }

        // Every segment, whole, in log order.
        let total = opened.reduce(0) { $0 + $1.size }
        var index = StoreIndex()
        var previous = LSN.zero
        var scannedByOffset: [UInt64: [UInt64: EntrySummary]] = [:]
        var damagedRanges: [UInt64: [Range<UInt64>]] = [:]
        for (i, entry) in opened.enumerated() {
            let id = entry.header.id
            let file = name(entry.file.path)
            let isLast = i == opened.count - 1
            var scanner = SegmentScanner(file: entry.file, segment: id, from: UInt64(entry.header.size), end: entry.size)
            var summaries: [UInt64: EntrySummary] = [:]
            // Damage is judged once the next valid record is seen: damage after the last
            // record of the last segment is a torn or zero-filled end, not a problem.
            var pending: [Damage] = []
            func judge(_ d: Damage) {
                damagedRanges[id, default: []].append(d.offset..<(d.offset + d.length))
                if let header = d.header {
                    problem(.record, file, offset: d.offset, lsn: header.lsn, key: d.key,
                            "the record (\(d.length) bytes) fails its record checksum; its header is intact")
                    if let key = d.key, header.lsn.seq > previous.seq {
                        index.applyDamaged(EntrySummary(header: header, key: key, extensions: [],
                                                        location: Location(segment: id, offset: d.offset, length: UInt32(d.length)), damaged: true))
                    }
                } else {
                    problem(.record, file, offset: d.offset, "\(d.length) unreadable bytes: no valid record header; the scan searched for the next record")
                }
            }
            while let item = try scanner.next() {
                switch item {
                case .damage(let d):
                    pending.append(d)
                case .summary:
                    break
                case .record(let r, let location):
                    for d in pending { judge(d) }
                    pending.removeAll()
                    report.records += 1
                    if r.lsn.seq <= previous.seq && previous != .zero {
                        problem(.order, file, offset: location.offset, lsn: r.lsn, key: r.key, "out of LSN order: it follows record \(previous)")
                        continue
                    }
                    if r.type == .put {
                        let actual = XXH3.hash(r.value)
                        if actual != r.header.contentChecksum {
                            problem(.content, file, offset: location.offset, lsn: r.lsn, key: r.key,
                                    "the value's XXH3-64 is \(actual.hex16), not the content checksum \(r.header.contentChecksum.hex16)")
                        }
                    }
                    let summary = r.summary(at: location)
                    summaries[location.offset] = summary
                    index.apply(summary)
                    previous = r.lsn
                }
            }
            if isLast, !pending.isEmpty {
                let start = pending[0].offset
                let zero = (try? Recovery.isZero(entry.file, from: start, to: entry.size)) ?? false
                report.notes.append("\(file): \(entry.size - start) bytes after the last record at offset \(start) "
                                    + (zero ? "are the writer's zero-filled end" : "are a torn write (a crash during an append)")
                                    + "; start-up cuts them")
            } else {
                for d in pending { judge(d) }
            }
            scannedByOffset[id] = summaries
            report.segments += 1
            report.bytes += entry.size
            progress(report.bytes, total)
        }
        report.highestLSN = previous

        // Hints: start-up loads a valid hint instead of scanning its segment.
        for entry in opened {
            let id = entry.header.id
            let hintName = DataDirectory.name(id) + ".hint"
            guard names.contains(hintName) else { continue }
            guard let hinted = HintFile.load(fs: fs, dir: dir, segment: id, segmentSize: entry.size) else {
                report.notes.append("\(hintName): stale or damaged; start-up ignores it and scans the segment")
                continue
            }
            let scanned = scannedByOffset[id] ?? [:]
            let damaged = damagedRanges[id] ?? []
            var hintedOffsets = Set<UInt64>()
            for h in hinted {
                hintedOffsets.insert(h.location.offset)
                if damaged.contains(where: { $0.contains(h.location.offset) }) { continue }
                guard let s = scanned[h.location.offset] else {
                    problem(.hint, hintName, offset: h.location.offset, lsn: h.lsn, key: h.key,
                            "names a record the segment does not hold there; start-up would index it")
                    continue
                }
                if s != h {
                    problem(.hint, hintName, offset: h.location.offset, lsn: s.lsn, key: s.key,
                            "describes the record at this offset otherwise than the segment holds it (hint: record \(h.lsn), key \(h.key))")
                }
            }
            for (offset, s) in scanned where !hintedOffsets.contains(offset) {
                problem(.hint, hintName, offset: offset, lsn: s.lsn, key: s.key, "lacks the record at this offset; start-up would not index it")
            }
        }

        // Live objects: puts were checked above; chunked objects are read back by the caller.
        var chunked: [ChunkedObject] = []
        let files = Dictionary(opened.map { ($0.header.id, $0.file) }, uniquingKeysWith: { a, _ in a })
        var after: Key?
        while true {
            let step = index.list(prefix: [], after: after, limit: 1000)
            guard case .done(let keys, let more) = step else { break }
            for key in keys {
                let v = index.objects[key]!
                let file = DataDirectory.name(v.location.segment) + ".seg"
                // A damaged newest version was reported with its record.
                if v.damaged && v.type != .manifest { continue }
                guard v.type == .manifest else {
                    report.objects += 1
                    continue
                }
                if v.damaged {
                    problem(.content, file, offset: v.location.offset, lsn: v.lsn, key: key,
                            "the object's manifest names chunks that are not in the log (or are damaged)")
                    continue
                }
                var parts: [ObjectBody.Part] = []
                for location in v.chunks {
                    guard let f = files[location.segment] else { break }
                    parts.append(ObjectBody.Part(file: f, location: location))
                }
                guard parts.count == v.chunks.count else {
                    problem(.content, file, offset: v.location.offset, lsn: v.lsn, key: key, "a chunk's segment is missing")
                    continue
                }
                chunked.append(ChunkedObject(key: key, lsn: v.lsn, file: file, offset: v.location.offset, parts: parts,
                                             contentChecksum: v.contentChecksum, objectParts: v.parts, size: v.size))
            }
            guard more, let last = keys.last else { break }
            after = last
        }
        return chunked
    }
}
