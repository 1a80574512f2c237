    train = pd.read_csv("data/train.csv")
    validation = pd.read_csv("data/validation.csv")
    test = pd.read_csv("data/test.csv")
    features = [column for column in test.columns if column != "id"]
@@LABELLED@@