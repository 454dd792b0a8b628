"""A first look at gluonbert: encode a batch of sentence pairs with a BERT encoder.

    .venv/bin/python scripts/demo_encoder.py
"""
import gluonbert  # first: it sets the OpenMP thread count MXNet reads at import
import mxnet as mx

encoder = gluonbert.BERTEncoder(vocab_size=30522, units=768, hidden_size=3072, num_heads=12,
                                num_layers=12, dropout=0.1)
encoder.initialize()
words = mx.nd.random.randint(low=0, high=30522, shape=(2, 8)).astype('float32')
segments = mx.nd.array([[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1, 1]])
encodings = encoder(words, segments, None)
print('encodings:', encodings.shape, '(batch, seq_len, units)')

model = gluonbert.BERTModel(gluonbert.BERTConfig.from_preset('bert_12_768_12'))
model.initialize()
print(f'bert_12_768_12 parameters: {gluonbert.count_parameters(model):,}')
