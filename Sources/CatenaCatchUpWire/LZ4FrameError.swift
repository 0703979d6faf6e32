import CLZ4

/// An error raised by the LZ4 frame codec (``LZ4FrameCompressor``, ``LZ4FrameDecompressor``, ``LZ4Frame``).
///
/// Match on ``code`` to decide what to do; ``message`` is for humans and logs and includes
/// liblz4's own error name (from `LZ4F_getErrorName`) when the failure came from liblz4.
/// New codes may be added in later versions without breaking source compatibility, so a
/// `switch` over ``code`` should always have a `default` branch.
public struct LZ4FrameError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The kind of failure. An open set of values, compared with `==` or matched in a `switch`.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: Hashable, Sendable {
            case compressionFailed
            case corruptFrame
            case checksumMismatch
            case truncatedFrame
            case outputLimitExceeded
            case alreadyFinished
            case allocationFailed
            case missingContentChecksum
        }

        private let base: Base

        private init(_ base: Base) {
            self.base = base
        }

        /// liblz4 refused to compress (for example an invalid parameter combination).
        public static let compressionFailed = Code(.compressionFailed)
        /// The input is not a well-formed LZ4 frame: bad magic number, invalid header flags,
        /// an undecodable block, a wrong declared content size, or bytes after the end of the frame.
        public static let corruptFrame = Code(.corruptFrame)
        /// A header, block or content checksum did not match the data.
        public static let checksumMismatch = Code(.checksumMismatch)
        /// The input ended before the frame's end mark and content checksum were seen.
        public static let truncatedFrame = Code(.truncatedFrame)
        /// Decompressing would produce more bytes than the configured limit allows.
        public static let outputLimitExceeded = Code(.outputLimitExceeded)
        /// The compressor was used after ``LZ4FrameCompressor/finish()`` completed the frame.
        public static let alreadyFinished = Code(.alreadyFinished)
        /// liblz4 could not allocate a context or its working buffers.
        public static let allocationFailed = Code(.allocationFailed)
        /// The frame carries no content checksum, but the decoder was told to require one.
        public static let missingContentChecksum = Code(.missingContentChecksum)

        /// The code's name, for example `checksumMismatch`.
        public var description: String {
            switch self.base {
            case .compressionFailed: "compressionFailed"
            case .corruptFrame: "corruptFrame"
            case .checksumMismatch: "checksumMismatch"
            case .truncatedFrame: "truncatedFrame"
            case .outputLimitExceeded: "outputLimitExceeded"
            case .alreadyFinished: "alreadyFinished"
            case .allocationFailed: "allocationFailed"
            case .missingContentChecksum: "missingContentChecksum"
            }
        }
    }

    /// What went wrong, in machine-matchable form.
    public var code: Code

    /// A human-readable explanation; includes liblz4's error name (such as
    /// `ERROR_contentChecksum_invalid`) when the failure was reported by liblz4.
    public var message: String

    /// liblz4's error name for this failure (`LZ4F_getErrorName`), or `nil` when the error
    /// was detected by this module rather than by liblz4.
    public var lz4ErrorName: String?

    /// Creates an error with the given code, message and optional liblz4 error name.
    public init(code: Code, message: String, lz4ErrorName: String? = nil) {
        self.code = code
        self.lz4ErrorName = lz4ErrorName
        if let lz4ErrorName {
            self.message = "\(message) (liblz4: \(lz4ErrorName))"
        } else {
            self.message = message
        }
    }

    /// `LZ4FrameError.<code>: <message>`.
    public var description: String {
        "LZ4FrameError.\(self.code): \(self.message)"
    }
}

extension LZ4FrameError {
    /// Whether `result` (the return value of an LZ4F function) is an error code.
    static func isError(_ result: Int) -> Bool {
        LZ4F_isError(result) != 0
    }

    /// liblz4's name for the error code `result`.
    static func errorName(_ result: Int) -> String {
        guard let name = LZ4F_getErrorName(result) else { return "unknown liblz4 error" }
        return String(cString: name)
    }

    /// Maps an LZ4F error returned while compressing.
    static func compression(_ result: Int, _ what: String) -> LZ4FrameError {
        let name = Self.errorName(result)
        let code: Code = name == "ERROR_allocation_failed" ? .allocationFailed : .compressionFailed
        return LZ4FrameError(code: code, message: what, lz4ErrorName: name)
    }

    /// Maps an LZ4F error returned while decompressing onto a corruption code.
    static func decompression(_ result: Int) -> LZ4FrameError {
        let name = Self.errorName(result)
        switch name {
        case "ERROR_headerChecksum_invalid":
            return LZ4FrameError(code: .checksumMismatch, message: "frame header checksum mismatch", lz4ErrorName: name)
        case "ERROR_blockChecksum_invalid":
            return LZ4FrameError(code: .checksumMismatch, message: "block checksum mismatch", lz4ErrorName: name)
        case "ERROR_contentChecksum_invalid":
            return LZ4FrameError(code: .checksumMismatch, message: "content checksum mismatch", lz4ErrorName: name)
        case "ERROR_allocation_failed":
            return LZ4FrameError(code: .allocationFailed, message: "liblz4 could not allocate decompression buffers", lz4ErrorName: name)
        default:
            return LZ4FrameError(code: .corruptFrame, message: "corrupt LZ4 frame", lz4ErrorName: name)
        }
    }
}
