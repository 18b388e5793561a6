"""The parity oracle: npgpt and torchgpt compared tensor by tensor (docs/readme/parity.md)."""
