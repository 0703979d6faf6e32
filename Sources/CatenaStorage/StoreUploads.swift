import CatenaCore

/// Multipart uploads as the durable log holds them: what ``Store/listUploads(prefix:after:limit:)``
/// and ``Store/listParts(of:after:limit:)`` answer (at the tail, what the chain committed).
extension Store {
    /// Open multipart uploads of keys starting with `prefix`, in order of key then upload id,
    /// strictly after `after`; at most `limit`. An upload past its time is not listed (it takes
    /// nothing more; compaction collects it).
    public func listUploads(prefix: [UInt8] = [], after: UploadCursor? = nil, limit: Int = 1000) throws(CatenaError) -> UploadPage {
        guard limit >= 1 else { throw CatenaError(.invalidArgument, "list limit must be at least 1") }
        let cutoff = Store.uploadCutoff(now: configuration.now(), timeout: configuration.abandonedUploadTimeout.nanoseconds)
        return state.withLock { s in
            var open = s.index.multipart.filter { $0.value.key.hasPrefix(prefix) && $0.value.created >= cutoff }
                .map { (id: $0.key, upload: $0.value) }
            if let after {
                open.removeAll { !Store.precedes((after.key, after.id), ($0.upload.key, $0.id)) }
            }
            open.sort { Store.precedes(($0.upload.key, $0.id), ($1.upload.key, $1.id)) }
            let page = open.prefix(limit).map { Store.uploadInfo($0.id, $0.upload) }
            let next = open.count > limit ? page.last.map { UploadCursor(key: $0.key, id: $0.id) } : nil
            return UploadPage(uploads: page, nextCursor: next)
        }
    }

    /// The parts of the open upload `id`, in order of part number, after part `after`; at most
    /// `limit`. Throws `noSuchUpload` if the upload is not open (or past its time).
    public func listParts(of id: UploadID, after: UInt32 = 0, limit: Int = 1000) throws(CatenaError) -> PartPage {
        guard limit >= 1 else { throw CatenaError(.invalidArgument, "list limit must be at least 1") }
        let cutoff = Store.uploadCutoff(now: configuration.now(), timeout: configuration.abandonedUploadTimeout.nanoseconds)
        return try state.withLock { (s) throws(CatenaError) -> PartPage in
            guard let upload = s.index.multipart[id], upload.created >= cutoff else {
                throw CatenaError(.noSuchUpload, "no upload \(id) is open (never created, completed, aborted, or expired)")
            }
            let numbers = upload.parts.keys.filter { $0 > after }.sorted()
            let parts = numbers.prefix(limit).map { n -> PartInfo in
                let p = upload.parts[n]!
                return PartInfo(number: n, size: p.part.size, checksum: p.part.checksum, lsn: p.lsn, timestamp: p.timestamp,
                                group: p.part.group, chunkCount: p.part.chunkCount)
            }
            return PartPage(upload: Store.uploadInfo(id, upload), parts: parts, nextPartNumber: numbers.count > limit ? parts.last?.number : nil)
        }
    }

    static func uploadInfo(_ id: UploadID, _ upload: OpenUpload) -> UploadInfo {
        let (contentType, metadata) = objectFields(upload.extensions)
        return UploadInfo(key: upload.key, id: id, lsn: upload.lsn, created: upload.created, contentType: contentType,
                          userMetadata: metadata, partCount: upload.parts.count)
    }

    /// Uploads created before this (head timestamps) are past their time.
    static func uploadCutoff(now: UInt64, timeout: UInt64) -> UInt64 {
        now > timeout ? now - timeout : 0
    }

    static func precedes(_ a: (Key, UploadID), _ b: (Key, UploadID)) -> Bool {
        if a.0 != b.0 { return a.0 < b.0 }
        return (a.1.high, a.1.low) < (b.1.high, b.1.low)
    }
}
