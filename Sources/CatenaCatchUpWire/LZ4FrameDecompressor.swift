import CLZ4

/// Streaming LZ4 frame decoder for exactly one frame, fed in slices of any size (down to one
/// byte at a time).
///
/// Every checksum the frame carries (header, block, content) is verified; any corruption ends
/// in a thrown ``LZ4FrameError`` (``LZ4FrameError/Code/corruptFrame``,
/// ``LZ4FrameError/Code/checksumMismatch``), after which the decompressor stays failed and
/// rethrows that error. Skippable frames and bytes after the end of the frame are rejected as
/// ``LZ4FrameError/Code/corruptFrame``. Call ``finish()`` once the input is exhausted to learn
/// whether the frame was complete.
///
/// Memory is bounded: liblz4's context holds at most about two blocks (≤ 4 MiB each) and a
/// single ``decompress(_:)-(UnsafeRawBufferPointer)`` call never returns more than
/// `maxOutputPerCall` bytes — it throws ``LZ4FrameError/Code/outputLimitExceeded`` instead.
/// Since output is produced a whole block at a time and LZ4 expands at most about 255×, a call
/// given `n` input bytes produces at most about `blockSize + 255 × n` bytes; with the default
/// limit (64 MiB) slices of up to 128 KiB never hit the limit on a valid frame.
///
/// Not thread-safe and not `Sendable`: one owner uses it at a time.
public final class LZ4FrameDecompressor {
    private static let scratchSize = 256 << 10

    private var context: OpaquePointer?
    private let maxOutputPerCall: Int
    private var scratch: UnsafeMutableRawBufferPointer
    /// How many leading bytes of the frame were checked against ``LZ4Frame/magic``.
    private var magicBytesSeen = 0
    /// Whether to refuse frames without a content checksum (catch-up requires one).
    private let requireContentChecksum: Bool
    private var descriptorChecked = false
    private var finished = false
    private var failure: LZ4FrameError?

    /// `true` once the end mark and (if present) the content checksum were consumed and verified.
    public var isFinished: Bool { self.finished }

    /// Creates a decoder for one frame.
    ///
    /// - Parameters:
    ///   - maxOutputPerCall: The most bytes one `decompress` call may return; exceeding it throws
    ///     ``LZ4FrameError/Code/outputLimitExceeded``. Must not be negative.
    ///   - requireContentChecksum: Refuse a frame whose descriptor has no content checksum with
    ///     ``LZ4FrameError/Code/missingContentChecksum`` (segment transfer between nodes requires
    ///     one, so no corruption can pass unnoticed). Default false: any valid frame.
    public init(maxOutputPerCall: Int = 64 << 20, requireContentChecksum: Bool = false) {
        precondition(maxOutputPerCall >= 0, "maxOutputPerCall must not be negative")
        self.maxOutputPerCall = maxOutputPerCall
        self.requireContentChecksum = requireContentChecksum
        self.scratch = .allocate(byteCount: Self.scratchSize, alignment: 16)
        var context: OpaquePointer?
        let result = LZ4F_createDecompressionContext(&context, UInt32(LZ4F_VERSION))
        if LZ4FrameError.isError(result) || context == nil {
            LZ4F_freeDecompressionContext(context)
            self.context = nil
            self.failure = LZ4FrameError(
                code: .allocationFailed,
                message: "cannot create LZ4F decompression context",
                lz4ErrorName: LZ4FrameError.isError(result) ? LZ4FrameError.errorName(result) : nil
            )
        } else {
            self.context = context
        }
    }

    deinit {
        LZ4F_freeDecompressionContext(self.context)
        self.scratch.deallocate()
    }

    /// Consumes `input` (any slice of the frame, possibly empty) and returns the decompressed
    /// bytes that became available.
    ///
    /// - Throws: ``LZ4FrameError/Code/corruptFrame`` (bad magic, invalid header, undecodable
    ///   block, bytes after the end of the frame), ``LZ4FrameError/Code/checksumMismatch``,
    ///   ``LZ4FrameError/Code/outputLimitExceeded``. After an error the decompressor is failed
    ///   and every later call rethrows the same error.
    public func decompress(_ input: UnsafeRawBufferPointer) throws -> [UInt8] {
        if let failure = self.failure { throw failure }
        if self.finished {
            guard input.isEmpty else {
                throw self.fail(LZ4FrameError(
                    code: .corruptFrame,
                    message: "\(input.count) byte(s) after the end of the LZ4 frame"
                ))
            }
            return []
        }
        guard let inputBase = input.baseAddress, !input.isEmpty else { return [] }

        // Check the magic number ourselves: liblz4 would also accept skippable frames.
        var offset = 0
        while self.magicBytesSeen < LZ4Frame.magic.count, offset < input.count {
            guard input[offset] == LZ4Frame.magic[self.magicBytesSeen] else {
                throw self.fail(LZ4FrameError(
                    code: .corruptFrame,
                    message: "bad LZ4 frame magic number (expected 04 22 4D 18)"
                ))
            }
            self.magicBytesSeen += 1
            offset += 1
        }
        // The byte after the magic is the frame descriptor's FLG; bit 2 = content checksum.
        if !self.descriptorChecked, self.magicBytesSeen == LZ4Frame.magic.count, offset < input.count {
            self.descriptorChecked = true
            if self.requireContentChecksum && input[offset] & 0x04 == 0 {
                throw self.fail(LZ4FrameError(
                    code: .missingContentChecksum,
                    message: "LZ4 frame has no content checksum, and one is required"
                ))
            }
        }

        var output: [UInt8] = []
        var source = inputBase
        var remaining = input.count
        var options = LZ4F_decompressOptions_t()
        options.skipChecksums = 0
        while true {
            var sourceSize = remaining
            var destinationSize = self.scratch.count
            let hint = LZ4F_decompress(
                self.context, self.scratch.baseAddress, &destinationSize, source, &sourceSize, &options
            )
            if LZ4FrameError.isError(hint) {
                throw self.fail(LZ4FrameError.decompression(hint))
            }
            source += sourceSize
            remaining -= sourceSize
            if destinationSize > 0 {
                guard destinationSize <= self.maxOutputPerCall - output.count else {
                    throw self.fail(LZ4FrameError(
                        code: .outputLimitExceeded,
                        message: "decompressed output exceeds the limit of \(self.maxOutputPerCall) bytes per call"
                    ))
                }
                output.append(contentsOf: UnsafeRawBufferPointer(start: self.scratch.baseAddress, count: destinationSize))
            }
            if hint == 0 {
                // End mark and content checksum consumed and verified.
                self.finished = true
                guard remaining == 0 else {
                    throw self.fail(LZ4FrameError(
                        code: .corruptFrame,
                        message: "\(remaining) byte(s) after the end of the LZ4 frame"
                    ))
                }
                return output
            }
            // Each round consumes input or produces output; stop when neither happens.
            // Input is finite and output is capped, so this loop always terminates.
            if sourceSize == 0 && destinationSize == 0 {
                break
            }
        }
        return output
    }

    /// Consumes `input`; see ``decompress(_:)-(UnsafeRawBufferPointer)``. Accepts `[UInt8]`,
    /// `ArraySlice<UInt8>`, `Data` and any other collection of bytes.
    public func decompress(_ input: some Collection<UInt8>) throws -> [UInt8] {
        if let result = try input.withContiguousStorageIfAvailable({ try self.decompress(UnsafeRawBufferPointer($0)) }) {
            return result
        }
        return try Array(input).withUnsafeBytes { try self.decompress($0) }
    }

    /// Confirms that the whole frame was decoded and verified. Call it when the input is
    /// exhausted; it does not change the decompressor's state.
    ///
    /// - Throws: ``LZ4FrameError/Code/truncatedFrame`` if the frame's end mark or content
    ///   checksum has not been seen, or the error that earlier failed the decompressor.
    public func finish() throws {
        if let failure = self.failure { throw failure }
        guard self.finished else {
            throw LZ4FrameError(
                code: .truncatedFrame,
                message: self.magicBytesSeen == 0
                    ? "no LZ4 frame data was received"
                    : "the LZ4 frame ended before its end mark and content checksum"
            )
        }
    }

    private func fail(_ error: LZ4FrameError) -> LZ4FrameError {
        self.failure = error
        return error
    }
}

@available(*, unavailable, message: "LZ4FrameDecompressor has a single owner; it must not cross isolation domains")
extension LZ4FrameDecompressor: Sendable {}
