import CatenaCore

/// The read path: point reads, listings and log streams.
extension Store {
    /// The highest durable LSN (`.zero` for an empty log).
    public var highestLSN: LSN { state.withLock { $0.durable } }

    /// The LSN the next enqueued record must follow (the last accepted by ``enqueue(_:)``; after
    /// a failed append, the last record that was written). The head assigns from here.
    public var lastEnqueuedLSN: LSN { state.withLock { $0.tail } }

    /// Bytes accepted by ``enqueue(_:)`` but not yet durable. The store does not bound it: a
    /// caller that must bound memory (the head, a replication link) waits while it is high.
    public var pendingAppendBytes: Int {
        state.withLock { s in s.queuedBytes + s.written.reduce(0) { $0 + $1.bytes } }
    }

    /// Counters since open.
    public var metrics: StoreMetrics { state.withLock { $0.metrics } }

    /// Damage found at open (or later) that the store refuses to serve.
    public var damage: [DamageReport] {
        state.withLock { s in
            s.damage.map { DamageReport(path: $0.path, offset: $0.offset, length: $0.length, lsn: $0.header?.lsn, key: $0.key, lostSeqs: $0.lost) }
        }
    }

    /// The newest version's metadata, or nil if the key does not exist or was deleted.
    public func head(_ key: Key) throws(CatenaError) -> ObjectInfo? {
        try readInfo(key).info
    }

    /// The metadata of one version of `key` and that version's LSN, even when it is a delete:
    /// ``read(_:range:at:)`` without the body. `version` nil: the newest; else exactly that
    /// version, which must be held here (`unavailable` otherwise). `corruption` if the version
    /// is damaged on disk, or damage may hide a newer version of the key.
    public func readInfo(_ key: Key, at version: LSN? = nil) throws(CatenaError) -> VersionedInfo {
        try state.withLock { (s) throws(CatenaError) -> VersionedInfo in
            guard let v = try Store.storedVersion(of: key, at: version, in: s) else { return VersionedInfo(lsn: nil, info: nil) }
            return VersionedInfo(lsn: v.lsn, info: v.type == .delete ? nil : Store.info(key, v, withParts: true))
        }
    }

    /// The newest version's LSN and content checksum — what a conditional write is checked
    /// against — or nil if the key does not exist or was deleted; `corruption` as ``head(_:)``.
    public func version(of key: Key) throws(CatenaError) -> KeyVersion? {
        try state.withLock { (s) throws(CatenaError) -> KeyVersion? in
            try Store.servableVersion(of: key, in: s).map { KeyVersion(lsn: $0.lsn, contentChecksum: $0.contentChecksum) }
        }
    }

    /// The newest version of `key` if it exists and may be served: nil for a missing or deleted
    /// key, `corruption` if that version or damage that may have replaced it is on disk.
    static func servableVersion(of key: Key, in s: State) throws(CatenaError) -> ObjectVersion? {
        guard let v = try storedVersion(of: key, at: nil, in: s) else { return nil }
        return v.type == .delete ? nil : v
    }

    /// The version of `key` a read at `lsn` serves (nil: the newest), a tombstone included; nil
    /// if the key has no version here. Throws `corruption` if that version is damaged on disk,
    /// if damage may have replaced the key's newest version (``refuseIfPossiblyStale``), or if
    /// the version asked for may lie in unreadable records; `unavailable` if the store does not
    /// hold the version asked for (never had it, or forgot it: see ``noteCommitted(through:)``).
    static func storedVersion(of key: Key, at lsn: LSN?, in s: State) throws(CatenaError) -> ObjectVersion? {
        let newest = s.index.objects[key]
        try refuseIfPossiblyStale(key, newest, s)
        guard let lsn else {
            guard let newest else { return nil }
            if newest.damaged {
                throw CatenaError(.corruption, "the newest version of '\(key)' (record \(newest.lsn), segment \(newest.location.segment) offset \(newest.location.offset)) is damaged on disk")
            }
            return newest
        }
        guard let v = s.index.version(of: key, at: lsn) else { throw missingVersion(key, lsn, newest, s) }
        if v.damaged {
            throw CatenaError(.corruption, "version \(lsn) of '\(key)' (segment \(v.location.segment) offset \(v.location.offset)) is damaged on disk")
        }
        return v
    }

    /// The error for a read at a version of `key` the index does not hold: `corruption` if
    /// unreadable records may have held it, else `unavailable` (the reader asks again).
    static func missingVersion(_ key: Key, _ lsn: LSN, _ newest: ObjectVersion?, _ s: State) -> CatenaError {
        if let d = s.damage.first(where: { $0.lost?.contains(lsn.seq) ?? false }), let lost = d.lost {
            return CatenaError(.corruption, "version \(lsn) of '\(key)' may be in records \(lost.lowerBound)...\(lost.upperBound), which are unreadable (\(d)); this replica needs a re-copy")
        }
        let held = newest.map { "its newest is \($0.lsn)" } ?? "it holds no version of the key"
        return CatenaError(.unavailable, "version \(lsn) of '\(key)' is not held here (\(held); older versions are kept only from the newest one committed through seq \(s.index.commitHint)); retry")
    }

    /// Damage whose records' keys are unknown may have overwritten any key whose newest version
    /// is older than it, or created any key: refuse those reads rather than serve stale data.
    static func refuseIfPossiblyStale(_ key: Key, _ version: ObjectVersion?, _ s: State) throws(CatenaError) {
        for d in s.damage {
            guard let lost = d.lost else { continue }
            if version.map({ $0.lsn.seq < lost.upperBound }) ?? true {
                throw CatenaError(.corruption, "'\(key)' may have been written by records \(lost.lowerBound)...\(lost.upperBound), which are unreadable (\(d)); this replica needs a re-copy")
            }
        }
    }

    /// `withParts`: a multipart object's part list too (not in listings).
    static func info(_ key: Key, _ v: ObjectVersion, withParts: Bool = false) -> ObjectInfo {
        let (contentType, metadata) = objectFields(v.extensions)
        return ObjectInfo(
            key: key, lsn: v.lsn, size: v.size, contentChecksum: v.contentChecksum, contentType: contentType,
            userMetadata: metadata, timestamp: v.timestamp, requestID: v.requestID, chunkCount: v.chunks.count,
            parts: withParts ? v.parts : [])
    }

    /// The content type and user metadata in an extension area.
    static func objectFields(_ extensions: [UInt8]) -> (String?, [String: String]) {
        let exts = (try? EncodedRecord.parseExtensions(extensions[...])) ?? []
        var metadata: [String: String] = [:]
        for (name, value) in RecordExtension.userMetadata(in: exts) { metadata[name] = value }
        return (exts.first { $0.tag == RecordExtension.contentTypeTag }.map { String(decoding: $0.value, as: UTF8.self) }, metadata)
    }

    /// The newest version of `key` with a streaming body, or nil if it does not exist.
    ///
    /// The body verifies every record checksum and, at its end, the content checksum; a
    /// mismatch is thrown from the body's iterator (for values up to 4 MiB before any byte is
    /// returned). The body keeps reading the version that was newest when `get` was called,
    /// even if it is overwritten or compacted meanwhile.
    public func get(_ key: Key) throws(CatenaError) -> StoredObject? {
        try get(key, range: nil)
    }

    /// The newest version of `key` with a body of only the bytes in `range` (clamped to the
    /// object's size), or nil if it does not exist. Throws `invalidArgument` if the range starts
    /// past the object's end. Records wholly before the range are skipped without reading their
    /// values (a chunked object's read starts at the chunk that holds the offset); every record
    /// the range reaches into is read and verified whole; the content checksum, which covers
    /// the whole object, is not checked.
    public func get(_ key: Key, range: Range<UInt64>?) throws(CatenaError) -> StoredObject? {
        try read(key, range: range).object
    }

    /// One version of `key` — its LSN, even when it is a delete, and its object with a
    /// streaming body — as ``get(_:range:)`` reads the newest.
    ///
    /// `version` nil: the newest version. Otherwise exactly the version whose LSN (epoch and
    /// seq) is `version`: a CRAQ member whose newest version of a key is not yet committed
    /// serves the version the tail names. The store holds a key's newest version, the newest
    /// one at or below the commit hint (``noteCommitted(through:)``, the persisted watermark)
    /// and every one between; a version it does not hold (older, lost to a truncation or a
    /// restart, never written here) is `unavailable`. A version that is a delete reads as its
    /// LSN and no object. `corruption` if the version is damaged on disk, if damage may have
    /// replaced the key's newest version, or if the version may lie in unreadable records;
    /// `invalidArgument` if `range` starts past the object's end.
    public func read(_ key: Key, range: Range<UInt64>? = nil, at version: LSN? = nil) throws(CatenaError) -> VersionedRead {
        try state.withLock { (s) throws(CatenaError) -> VersionedRead in
            guard let v = try Store.storedVersion(of: key, at: version, in: s) else { return VersionedRead(lsn: nil, object: nil) }
            guard v.type != .delete else { return VersionedRead(lsn: v.lsn, object: nil) }
            return VersionedRead(lsn: v.lsn, object: try object(key, v, range: range, in: s))
        }
    }

    /// Version `v` of `key` with a body pinned to the segment files that hold it now (kept
    /// open by the body, whatever compaction does meanwhile).
    private func object(_ key: Key, _ v: ObjectVersion, range: Range<UInt64>?, in s: State) throws(CatenaError) -> StoredObject {
        let locations = v.type == .manifest ? v.chunks : [v.location]
        var parts: [ObjectBody.Part] = []
        for loc in locations {
            guard let seg = s.segments.first(where: { $0.id == loc.segment }) else {
                throw CatenaError(.corruption, "segment \(loc.segment) of '\(key)' is missing")
            }
            parts.append(ObjectBody.Part(file: seg.file, location: loc))
        }
        var body = ObjectBody(parts: parts, contentChecksum: v.contentChecksum, objectParts: v.parts, size: v.size, pool: readerPool)
        if let range {
            guard range.lowerBound <= v.size else {
                throw CatenaError(.invalidArgument, "range \(range.lowerBound)..<\(range.upperBound) starts past the end of '\(key)' (\(v.size) bytes)")
            }
            body.range = range.lowerBound..<Swift.min(range.upperBound, v.size)
        }
        return StoredObject(info: Store.info(key, v, withParts: true), body: body)
    }

    /// How many older versions the index holds for CRAQ reads (for tests).
    var olderVersionCount: Int { state.withLock { $0.index.olderVersionCount } }

    /// Live keys starting with `prefix`, in byte order, strictly after `after`; at most `limit`.
    ///
    /// The index is walked in steps of at most ``StoreConfiguration/listStepEntries`` entries,
    /// each under the store's lock, which is released between steps: a long listing (a large
    /// page, a prefix full of deleted keys) never holds appends up for more than one step. So a
    /// page is not one snapshot: each object in it is the newest durable version of its key when
    /// its step ran, and every key live throughout the call is listed, in byte order; a key
    /// created or deleted while the call runs may or may not be — as between two pages.
    public func list(prefix: [UInt8] = [], after: Key? = nil, limit: Int = 1000) throws(CatenaError) -> ListPage {
        guard limit >= 1 else { throw CatenaError(.invalidArgument, "list limit must be at least 1") }
        let stepEntries = configuration.listStepEntries
        var objects: [ObjectInfo] = []
        var cursor = after
        while true {
            let remaining = limit - objects.count
            let (infos, step) = try state.withLock { (s) throws(CatenaError) -> ([ObjectInfo], StoreIndex.ListStep) in
                try Store.checkListable(s.damage)
                let step = s.index.list(prefix: prefix, after: cursor, limit: remaining, maxEntries: stepEntries)
                let keys: [Key] = switch step {
                case .done(let keys, _), .paused(let keys, _): keys
                }
                return (keys.map { Store.info($0, s.index.objects[$0]!) }, step)
            }
            objects += infos
            switch step {
            case .done(_, let more):
                return ListPage(objects: objects, nextCursor: more ? objects.last?.key : nil)
            case .paused(_, let resumeAfter):
                cursor = resumeAfter
            }
        }
    }

    /// Like ``list(prefix:after:limit:)``, with keys that hold `delimiter` after the prefix
    /// rolled up into ``ListPage/commonPrefixes``: each such key is cut just after its first
    /// delimiter past the prefix, and every key under that common prefix is skipped (the walk
    /// seeks past it; a step may pass over some of its keys, but describes none). `limit` counts objects and common prefixes together. A cursor
    /// that is a common prefix (it ends with the delimiter) resumes after every key under it.
    /// An empty delimiter lists as ``list(prefix:after:limit:)`` does.
    public func list(prefix: [UInt8] = [], after: Key? = nil, limit: Int = 1000, delimiter: [UInt8]) throws(CatenaError) -> ListPage {
        guard !delimiter.isEmpty else { return try list(prefix: prefix, after: after, limit: limit) }
        guard limit >= 1 else { throw CatenaError(.invalidArgument, "list limit must be at least 1") }
        let stepEntries = configuration.listStepEntries
        var objects: [ObjectInfo] = []
        var prefixes: [Key] = []
        var last: Key?
        func skipping(_ key: [UInt8]) -> [UInt8] { key + [0xFF] }
        // A cursor that is a common prefix (the last page ended with it) resumes after every key
        // under it; one that is an object's key, after that key.
        var cursor: [UInt8]? = after.map { a in
            Store.commonPrefix(of: a, after: prefix, delimiter: delimiter) == a ? skipping(a.bytes) : a.bytes
        }
        while true {
            // The keys up to the first one under a common prefix; only theirs are described.
            let (infos, common, step) = try state.withLock { (s) throws(CatenaError) -> ([ObjectInfo], Key?, StoreIndex.ListStep) in
                try Store.checkListable(s.damage)
                let step = s.index.list(prefix: prefix, afterBytes: cursor, limit: limit - objects.count - prefixes.count,
                                        maxEntries: stepEntries)
                let keys: [Key] = switch step {
                case .done(let keys, _), .paused(let keys, _): keys
                }
                var infos: [ObjectInfo] = []
                for key in keys {
                    if let common = Store.commonPrefix(of: key, after: prefix, delimiter: delimiter) { return (infos, common, step) }
                    infos.append(Store.info(key, s.index.objects[key]!))
                }
                return (infos, nil, step)
            }
            for info in infos {
                objects.append(info)
                last = info.key
                cursor = info.key.bytes
            }
            var reseek = false
            if let common {
                prefixes.append(common)
                last = common
                cursor = skipping(common.bytes)
                reseek = true
            }
            let full = objects.count + prefixes.count >= limit
            if reseek || full {
                // Is there anything after the cursor? One more walk says (limit 0: existence only).
                if full {
                    // (A walk that pauses in a run of deleted keys says maybe: the next page may be empty.)
                    let more = state.withLock { s in
                        if case .done(_, false) = s.index.list(prefix: prefix, afterBytes: cursor, limit: 0, maxEntries: stepEntries) { return false }
                        return true
                    }
                    return ListPage(objects: objects, commonPrefixes: prefixes, nextCursor: more ? last : nil)
                }
                continue
            }
            switch step {
            case .done(_, let more):
                return ListPage(objects: objects, commonPrefixes: prefixes, nextCursor: more ? last : nil)
            case .paused(_, let resumeAfter):
                cursor = resumeAfter.bytes
            }
        }
    }

    /// Refuses a listing while records are unreadable: it would leave their keys out silently.
    static func checkListable(_ damage: [Damage]) throws(CatenaError) {
        if let d = damage.first(where: { $0.lost != nil }) {
            throw CatenaError(.corruption, "listing refused: records \(d.lost!.lowerBound)...\(d.lost!.upperBound) are unreadable (\(d)); this replica needs a re-copy")
        }
    }

    /// `key` cut just after the first `delimiter` that follows `prefix`, if it holds one there.
    static func commonPrefix(of key: Key, after prefix: [UInt8], delimiter: [UInt8]) -> Key? {
        let bytes = key.bytes
        guard bytes.count >= prefix.count + delimiter.count else { return nil }
        var i = prefix.count
        while i + delimiter.count <= bytes.count {
            if bytes[i] == delimiter[0] && bytes[i..<(i + delimiter.count)].elementsEqual(delimiter) {
                return try? Key(bytes: Array(bytes[..<(i + delimiter.count)]))
            }
            i += 1
        }
        return nil
    }

    /// The log's segments in order, sealed ones first; the last may be the active one.
    public var segments: [SegmentInfo] { state.withLock { $0.segments.map(\.info) } }

    /// The sealed segments, in log order.
    public var sealedSegments: [SegmentInfo] { segments.filter(\.sealed) }

    /// Every record with an LSN after `lsn`, in log order, up to the durable end at the time of
    /// the call. Throws ``CatenaError/Code/historyCompacted`` if compaction dropped records after
    /// `lsn` (ask from `.zero` for a full copy), and ``CatenaError/Code/corruption`` from the
    /// stream when it meets damaged bytes.
    public func records(after lsn: LSN) throws(CatenaError) -> RecordStream {
        try state.withLock { (s) throws(CatenaError) -> RecordStream in
            if lsn != .zero && lsn.seq < s.persistent.compactedThrough.seq {
                throw CatenaError(.historyCompacted, "records after \(lsn) were compacted (history kept from \(s.persistent.compactedThrough)); a full copy is needed")
            }
            let parts = s.segments.filter { $0.lastLSN.seq > lsn.seq }.map { seg in
                // In the active segment, skip the records at or before `lsn` that the index
                // locates: a follower asking for the newest records does not rescan the segment.
                let start = seg.sealed ? nil : Store.offset(after: lsn, in: s.activeEntries, segment: seg.id)
                return RecordStream.Part(file: seg.file, segment: seg.id, start: start ?? UInt64(seg.header.size), end: seg.size)
            }
            return RecordStream(parts: parts, after: lsn, pool: readerPool)
        }
    }

    /// Where the first record after `lsn` can start in the active segment: the end of the last
    /// indexed record at or before it (damaged bytes after that are still scanned and reported).
    /// Nil if no such record is indexed in `segment`.
    static func offset(after lsn: LSN, in entries: [EntrySummary], segment: UInt64) -> UInt64? {
        // `entries` are in log order.
        var low = 0, high = entries.count
        while low < high {
            let mid = (low + high) / 2
            if entries[mid].lsn.seq <= lsn.seq { low = mid + 1 } else { high = mid }
        }
        guard low > 0 else { return nil }
        let entry = entries[low - 1]
        guard entry.location.segment == segment else { return nil }
        return entry.location.offset + UInt64(entry.location.length)
    }

    /// The records of one sealed segment.
    public func records(inSegment id: UInt64) throws(CatenaError) -> RecordStream {
        try state.withLock { (s) throws(CatenaError) -> RecordStream in
            guard let seg = s.segments.first(where: { $0.id == id }), seg.sealed else {
                throw CatenaError(.invalidArgument, "no sealed segment \(id)")
            }
            return RecordStream(parts: [.init(file: seg.file, segment: seg.id, start: UInt64(seg.header.size), end: seg.size)], after: .zero, pool: readerPool)
        }
    }
}
