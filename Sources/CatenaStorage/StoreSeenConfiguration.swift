import CatenaCore

/// What the node has seen of its chain (``SeenChain``: the highest configuration and the epoch
/// history), persisted in the data directory (`CHAIN`) so that after a restart it still refuses
/// a master whose state went back — one restored from an old `master.json` must not take the
/// chain back to members it has left, nor make members truncate by a history that forgot where
/// an epoch started.
///
/// Layout, little-endian: magic `CCHN`, version (u16 = 1), reserved (u16), chain id (u32),
/// epoch (u64), cluster id, member count (u32), per member id and address (each u16 length +
/// UTF-8), history count (u32), per entry epoch (u64) and first seq (u64, 0: unknown), XXH3-64
/// of everything before. Replaced atomically (temp, fsync, rename, directory fsync).
extension Store {
    static let seenConfigurationMagic: UInt32 = 0x4E48_4343  // "CCHN"

    /// What ``persistSeen(_:)`` persisted, or nil if nothing was. Throws
    /// ``CatenaError/Code/corruption`` if the file is damaged.
    public func loadSeen() throws(CatenaError) -> SeenChain? {
        let path = dir.path + "/CHAIN"
        guard fs.fileExists(path) else { return nil }
        let file = try fs.open(path, mode: .read)
        defer { file.close() }
        let size = try file.size()
        guard size <= 1 << 20 else { throw CatenaError(.corruption, "\(path): \(size) bytes is too large for a chain configuration") }
        return try Store.decodeSeenConfiguration(try file.read(at: 0, count: Int(size)), path: path)
    }

    /// Persists what the node has seen (durable when this returns).
    public func persistSeen(_ seen: SeenChain) async throws(CatenaError) {
        let bytes = Store.encodeSeenConfiguration(seen)
        try await runBlocking(on: readerPool) { [self] () throws(CatenaError) in
            try stateFileLock.withLock { _ throws(CatenaError) in
                try Store.writeAtomically(fs: fs, dir: dir, path: dir.path + "/CHAIN", bytes: bytes)
            }
        }
    }

    static func encodeSeenConfiguration(_ seen: SeenChain) -> [UInt8] {
        let c = seen.configuration
        var w = ByteWriter(capacity: 64)
        func string(_ s: String) {
            let utf8 = Array(s.utf8.prefix(Int(UInt16.max)))
            w.u16(UInt16(utf8.count))
            w.raw(utf8)
        }
        w.u32(seenConfigurationMagic); w.u16(1); w.u16(0)
        w.u32(c.chainID); w.u64(c.epoch)
        string(c.clusterID)
        w.u32(UInt32(c.members.count))
        for m in c.members {
            string(m.id.rawValue)
            string(m.address)
        }
        w.u32(UInt32(seen.history.entries.count))
        for e in seen.history.entries {
            w.u64(e.epoch)
            w.u64(e.firstSeq ?? 0)
        }
        w.u64(XXH3.hash(w.bytes))
        return w.bytes
    }

    static func decodeSeenConfiguration(_ bytes: [UInt8], path: String) throws(CatenaError) -> SeenChain {
        guard bytes.count >= 8 + 4 + 8 + 2 + 4 + 8 else { throw CatenaError(.corruption, "\(path): \(bytes.count) bytes is too short") }
        let stored = bytes.withUnsafeBytes { $0.le(bytes.count - 8, as: UInt64.self) }
        guard XXH3.hash(bytes[0..<(bytes.count - 8)]) == stored else { throw CatenaError(.corruption, "\(path): checksum mismatch") }
        var r = ByteReader(Array(bytes[0..<(bytes.count - 8)]))
        guard r.u32() == seenConfigurationMagic else { throw CatenaError(.corruption, "\(path): bad magic") }
        let version = r.u16()
        guard version == 1 else { throw CatenaError(.unsupportedVersion, "\(path): format version \(version)") }
        _ = r.u16()
        func string() throws(CatenaError) -> String {
            guard r.remaining >= 2 else { throw CatenaError(.corruption, "\(path): truncated") }
            let n = Int(r.u16())
            guard r.remaining >= n, let s = String(validating: r.raw(n), as: UTF8.self) else {
                throw CatenaError(.corruption, "\(path): truncated or not UTF-8")
            }
            return s
        }
        let chainID = r.u32()
        let epoch = r.u64()
        let clusterID = try string()
        guard r.remaining >= 4 else { throw CatenaError(.corruption, "\(path): truncated") }
        let count = Int(r.u32())
        guard count <= r.remaining / 4 else { throw CatenaError(.corruption, "\(path): claims \(count) members") }
        var members: [ChainMember] = []
        for _ in 0..<count {
            let id = try string()
            let address = try string()
            members.append(ChainMember(id: try NodeID(id), address: address))
        }
        guard r.remaining >= 4 else { throw CatenaError(.corruption, "\(path): truncated") }
        let entries = Int(r.u32())
        guard entries <= r.remaining / 16 else { throw CatenaError(.corruption, "\(path): claims \(entries) epochs") }
        let history = (0..<entries).map { _ in
            let epoch = r.u64(), first = r.u64()
            return EpochStart(epoch: epoch, firstSeq: first == 0 ? nil : first)
        }
        return SeenChain(configuration: try ChainConfiguration(clusterID: clusterID, chainID: chainID, epoch: epoch, members: members),
                         history: EpochHistory(history))
    }
}
